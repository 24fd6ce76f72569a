"""Does torch.compile pay for itself on a CPU? The recipe's whole run compiled cold, then compiled warm against eager.

    python benchmarks/compile_cpu.py [--rounds 2] [--experiment shakespeare_char_cpu] [run.py overrides]

Runs `python run.py experiment=<--experiment>` with `device.compile=true` once on an empty Inductor cache (a fresh
TORCHINDUCTOR_CACHE_DIR: the cold compile), then `--rounds` rounds of the same run eager (`device.compile=false`)
and compiled on that now warm cache, alternating. Per run: the process's wall time, the median ms/iter
(evaluations left out) and the last val loss. `benchmarks/startup.py --compiled` times a warm compiled run to its
first step.

Prints one line: `compile_cpu: <experiment>: eager <s> s ..., compiled warm <s> s (<x>) ..., cold <s> s ...`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, ENV, OURS_ITER, REPO, WARMUP, prepare_char, read_metrics  # benchmarks/ on sys.path

RUN_NUMBER = itertools.count()


def one_run(tmp: str, experiment: str, compile_: bool, cache: str, overrides: list[str]) -> dict[str, float]:
    """One run.py process: its wall time, median ms/iter and final val loss."""
    name = f"r{next(RUN_NUMBER)}"
    cmd = [sys.executable, str(REPO / "run.py"), f"experiment={experiment}", f"paths.data_dir={tmp}/data"]
    cmd += [f"device.compile={str(compile_).lower()}", f"name={name}", *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tmp, env={**ENV, "TORCHINDUCTOR_CACHE_DIR": cache}, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    [run] = [p for p in (Path(tmp) / "outputs" / name).iterdir() if not p.is_symlink()]
    steps = OURS_ITER.finditer((run / "run.log").read_text())
    step_ms = [float(m[2]) for m in steps if int(m[1]) >= WARMUP]
    return {
        "wall": wall,
        "ms": statistics.median(step_ms),
        "val": [r for r in read_metrics(run) if "val_loss" in r][-1]["val_loss"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--experiment", default="shakespeare_char_cpu")
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides for every run")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
        os.makedirs(f"{tmp}/prep")
        prepare_char(f"{tmp}/data", args.corpus, f"{tmp}/prep")
        runs_dir = f"{tmp}/runs"
        os.makedirs(runs_dir)
        os.symlink(f"{tmp}/data", f"{runs_dir}/data")
        cold = one_run(runs_dir, args.experiment, True, cache, args.overrides)
        eager, warm = [], []
        for _ in range(args.rounds):
            eager.append(one_run(runs_dir, args.experiment, False, cache, args.overrides))
            warm.append(one_run(runs_dir, args.experiment, True, cache, args.overrides))

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    ratio = statistics.median(w["wall"] / e["wall"] for e, w in zip(eager, warm, strict=True))
    print(
        f"compile_cpu: {args.experiment}: eager {med(eager, 'wall'):.1f} s whole run, {med(eager, 'ms'):.1f} ms/iter, "
        f"val {med(eager, 'val'):.4f}; compiled warm {med(warm, 'wall'):.1f} s ({ratio:.2f}x eager), "
        f"{med(warm, 'ms'):.1f} ms/iter, val {med(warm, 'val'):.4f}; compiled cold {cold['wall']:.1f} s, "
        f"val {cold['val']:.4f}; threads {os.environ.get('OMP_NUM_THREADS', 'default')}, median of {args.rounds} "
        f"rounds, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
