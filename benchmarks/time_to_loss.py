"""Time to a val loss: the classic CPU recipe against the modern one, back to back on the real corpus.

    python benchmarks/time_to_loss.py [--repeats 3] [--plot docs/time_to_loss_cpu.png] [extra run.py overrides]

Runs `python run.py experiment=shakespeare_char_cpu` and `experiment=shakespeare_char_cpu_fast` (alternating,
`--repeats` times each), both evaluating every `--eval-interval` steps on the same batches, and prints for each
the wall time and iterations until the val loss first reaches `--target` (1.8857: the classic recipe's val loss
at 2000 iters), then the ratio of the medians:

    shakespeare_char_cpu: 1.8857 at iter 2000 in 80.1 s (train 62.3 s); final val 1.8805 at 2000 (runs: 80.1 s)
    ...
    time_to_loss: fast / classic = 0.42 (median wall time to val 1.8857; target <= 0.5)

Wall time counts from launching `run.py` to the moment it prints the first evaluation at or below the target:
start-up, training and evaluations alike. `train` is the training steps alone (from the logged step times).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import CORPUS, ENV, REPO, prepare_char, read_metrics  # benchmarks/ is on sys.path as a script
from omegaconf import OmegaConf

PRESETS = ("shakespeare_char_cpu", "shakespeare_char_cpu_fast")
EVAL_LINE = re.compile(r"iter (\d+): train loss ([\d.]+), val loss ([\d.]+)")


@dataclass
class Run:
    preset: str
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (iter, val loss, seconds since launch)
    step_s: dict[int, float] = field(default_factory=dict)  # seconds of each training step
    tokens_per_step: int = 0

    def reached(self, target: float) -> tuple[int, float, float] | None:
        """(iter, wall s, train s) of the first evaluation at or below `target`, or None."""
        for it, val, wall in self.evals:
            if val <= target:
                return it, wall, sum(s for i, s in self.step_s.items() if i < it)
        return None


def run_preset(preset: str, tmp: str, common: list[str], env: dict[str, str]) -> Run:
    """One training run, its evaluations timed as they are printed."""
    run = Run(preset)
    cmd = [sys.executable, str(REPO / "run.py"), f"experiment={preset}", *common]
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        output = []
        for line in p.stdout:
            output.append(line)
            m = EVAL_LINE.search(line)
            if m:
                run.evals.append((int(m.group(1)), float(m.group(3)), time.perf_counter() - t0))
    if p.returncode != 0:
        sys.exit(f"{preset} failed ({p.returncode}):\n{''.join(output[-20:])}")
    [run_dir] = [d for d in (Path(tmp) / "outputs" / preset).iterdir() if not d.is_symlink()]
    records = read_metrics(run_dir)
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")  # as run
    run.tokens_per_step = cfg.model.block_size * cfg.train.batch_size * cfg.train.grad_accum
    # With log_interval 1 each record times one step (its tokens/s excludes evaluations).
    run.step_s = {r["iter"]: run.tokens_per_step / r["tokens_per_s"] for r in records if "tokens_per_s" in r}
    (Path(tmp) / "outputs" / preset).rename(Path(tmp) / f"done-{preset}-{time.time_ns()}")
    return run


def median_run(runs: list[Run], target: float) -> Run:
    """The run whose wall time to `target` is the median (a run that never reached it counts as slowest)."""
    ranked = sorted(runs, key=lambda r: h[1] if (h := r.reached(target)) else float("inf"))
    return ranked[(len(ranked) - 1) // 2]


def plot(runs: dict[str, list[Run]], target: float, path: str) -> None:
    """Val loss against wall time and against iterations: each preset's median run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_iter) = plt.subplots(1, 2, figsize=(11, 4.2))
    for preset, color in zip(PRESETS, ("tab:blue", "tab:orange"), strict=True):
        its, vals, walls = zip(*median_run(runs[preset], target).evals, strict=True)
        label = f"{preset} (median of {len(runs[preset])})" if len(runs[preset]) > 1 else preset
        by_time.plot(walls, vals, color=color, label=label)
        by_iter.plot(its, vals, color=color, label=label)
    for ax, xlabel in ((by_time, "wall time since launch (s)"), (by_iter, "iteration")):
        ax.axhline(target, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss")
        ax.set_ylim(1.4, 2.8)
        ax.grid(alpha=0.3)
        ax.legend()
    by_time.set_title(f"val loss vs wall time (dashed: {target})")
    by_iter.set_title("val loss vs iteration")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--target", type=float, default=1.8857, help="val loss to reach")
    ap.add_argument("--eval-interval", type=int, default=50, help="evaluate every this many steps (both presets)")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each preset, alternating; medians reported")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both runs (default: torch's)")
    ap.add_argument("--plot", default=None, help="write the val loss curves to this PNG")
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides for both, e.g. device.compile=true")
    args = ap.parse_args()

    env = {**ENV, "OMP_NUM_THREADS": str(args.threads)} if args.threads else ENV
    runs: dict[str, list[Run]] = {p: [] for p in PRESETS}
    with tempfile.TemporaryDirectory() as tmp:
        data = [f"paths.data_dir={tmp}/data", f"data.source={args.corpus}"]
        prepare_char(f"{tmp}/data", args.corpus, tmp)
        common = [*data, f"train.eval_interval={args.eval_interval}", *args.overrides]
        for _ in range(args.repeats):
            for preset in PRESETS:
                runs[preset].append(run_preset(preset, tmp, common, env))

    medians = {}
    for preset in PRESETS:
        hits = [r.reached(args.target) for r in runs[preset]]
        last = runs[preset][-1].evals[-1]
        if any(h is None for h in hits):
            print(f"{preset}: never reached {args.target}; final val {last[1]:.4f} at {last[0]}")
            continue
        its = sorted({h[0] for h in hits})
        medians[preset] = statistics.median(h[1] for h in hits)
        print(
            f"{preset}: {args.target} at iter {'/'.join(map(str, its))} in {medians[preset]:.1f} s "
            f"(train {statistics.median(h[2] for h in hits):.1f} s); final val {last[1]:.4f} at {last[0]} "
            f"(runs: {', '.join(f'{h[1]:.1f}' for h in hits)} s)"
        )
    if len(medians) == 2:
        ratio = medians[PRESETS[1]] / medians[PRESETS[0]]
        print(f"time_to_loss: fast / classic = {ratio:.2f} (median wall time to val {args.target}; target <= 0.5)")
    if args.plot:
        plot(runs, args.target, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
