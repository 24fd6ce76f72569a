"""Side by side with upstream nanoGPT: its train.py CPU recipe against ours, alternately, on the same tokens.

    python benchmarks/vs_nanogpt.py --nanogpt <nanoGPT checkout, or its .git dir> [--rounds 3] [--threads 1]
                                    [--experiment shakespeare_char_cpu] [--iters N] [--target 1.8857]
                                    [run.py overrides for ours, e.g. device.dtype=float32]

nanoGPT runs as its README's CPU example: `python train.py config/train_shakespeare_char.py --device=cpu
--compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0`, in a copy of the checkout made in a temporary
dir (the checkout itself is never written to); its `data/shakespeare_char/prepare.py` gets the corpus as its
input.txt. Ours is `python run.py experiment=<--experiment>` on our own preparation of the same corpus; the two
token files are compared byte for byte and the line says whether they are the same.

Each round runs both, in alternating order, as fresh processes. Per run: the whole process's wall time and CPU
time (user + system, from the kernel's accounting of the finished child: on a machine shared with other jobs it
moves far less than wall time; time the process spends stopped by someone else's SIGSTOP is left out of wall), the
median ms/iter as each program prints it (nanoGPT times each iteration, the evaluations inside the ones they
precede; ours excludes evaluations), the val loss at the last evaluation, and the seconds from launch to the first
evaluation at or below `--target`. Ratios are ours / nanoGPT's, taken per round; the line quotes their median and
the load average before and after.

Prints one line: `vs_nanogpt: <experiment> vs nanoGPT train.py, ... wall ours <s> vs <s> = <x> ...`.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import CORPUS, ENV, OURS_ITER, REPO, WARMUP, prepare_char  # benchmarks/ is on sys.path as a script

RECIPE = [  # nanoGPT's README: "I'm on a macbook" (or other cheap computer)
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--dropout=0.0",
]
# What each program prints per iteration and per evaluation.
NANOGPT_ITER = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")
NANOGPT_EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)")
OURS_EVAL = re.compile(r"iter (\d+): train loss [\d.]+, val loss ([\d.]+)")


@dataclass
class Run:
    wall_s: float = 0.0
    cpu_s: float = 0.0
    stopped_s: float = 0.0  # seconds the process was stopped by someone else, left out of wall_s
    iter_ms: list[tuple[int, float]] = field(default_factory=list)  # (iter, ms) as the program printed them
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (iter, val loss, seconds since launch)

    @property
    def ms_per_iter(self) -> float:
        """The median past the warm-up iterations (all of them in a run shorter than that)."""
        settled = [ms for it, ms in self.iter_ms if it >= WARMUP] or [ms for _, ms in self.iter_ms]
        return statistics.median(settled)

    def reached(self, target: float) -> float | None:
        return next((s for _, val, s in self.evals if val <= target), None)


def checkout_copy(src: Path, dst: Path) -> None:
    """A throwaway copy of nanoGPT's files: from a work tree, or from a git dir (`git archive HEAD`)."""
    if (src / "train.py").is_file():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "*.ipynb", "assets", "out*", "*.bin"))
    elif (src / "HEAD").is_file() and (src / "objects").is_dir():
        tar = subprocess.run(["git", f"--git-dir={src}", "archive", "HEAD"], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(dst, filter="data")
    else:
        raise SystemExit(f"{src} is neither a nanoGPT work tree (with train.py) nor a git dir")
    if not (dst / "train.py").is_file() or not (dst / "data" / "shakespeare_char" / "prepare.py").is_file():
        raise SystemExit(f"{src} does not look like nanoGPT: no train.py or data/shakespeare_char/prepare.py")


class StoppedTime(threading.Thread):
    """Seconds a process spends stopped (SIGSTOP, state T in /proc/<pid>/stat), sampled every 0.2 s: on a machine
    shared with jobs that pause one another, those seconds are not the program's and are left out of its wall time.
    Counts nothing where /proc does not exist."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.seconds, self.done = pid, 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                with open(f"/proc/{self.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return
            self.seconds += 0.2 if state in ("T", "t") else 0.0


def timed(cmd: list[str], cwd: Path, env: dict, iter_re: re.Pattern, eval_re: re.Pattern) -> Run:
    """Run `cmd`, reading its output as it comes: per-iteration times and timed evaluations."""
    run, lines = Run(), []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        stopped = StoppedTime(p.pid)
        for line in p.stdout:
            lines.append(line)
            if m := iter_re.search(line):
                run.iter_ms.append((int(m.group(1)), float(m.group(2))))
            elif m := eval_re.search(line):
                run.evals.append((int(m.group(1)), float(m.group(2)), time.perf_counter() - t0 - stopped.seconds))
    stopped.done.set()
    run.wall_s, run.stopped_s = time.perf_counter() - t0 - stopped.seconds, stopped.seconds
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0 or not run.evals or not run.iter_ms:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({p.returncode}):\n{''.join(lines[-30:])}")
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", required=True, type=Path, help="a nanoGPT checkout (work tree or .git dir)")
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--experiment", default="shakespeare_char_cpu", help="our preset")
    ap.add_argument("--iters", type=int, help="iterations for both (default: nanoGPT 2000, ours its preset's)")
    ap.add_argument("--target", type=float, default=1.8857, help="val loss whose time to reach is reported")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both (default: torch's, one per core)")
    ap.add_argument("--verbose", action="store_true", help="print each run's figures")
    ap.add_argument("overrides", nargs="*", help="run.py overrides for ours")
    args = ap.parse_args()
    env = {**ENV, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    iters = args.iters or 2000
    theirs_cmd = [sys.executable, "train.py", *RECIPE, f"--max_iters={iters}", f"--lr_decay_iters={iters}"]
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        nano, ours_dir = Path(tmp) / "nanoGPT", Path(tmp) / "ours"
        checkout_copy(args.nanogpt.resolve(), nano)
        shutil.copyfile(args.corpus, nano / "data" / "shakespeare_char" / "input.txt")
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=nano, env=env, check=True)
        ours_dir.mkdir()
        prepare_char(str(ours_dir / "data"), args.corpus, str(ours_dir))
        theirs_data, our_data = nano / "data" / "shakespeare_char", ours_dir / "data" / "shakespeare_char"
        same = all((theirs_data / f).read_bytes() == (our_data / f).read_bytes() for f in ("train.bin", "val.bin"))
        ours_cmd = [sys.executable, str(REPO / "run.py"), f"experiment={args.experiment}", "paths.data_dir=data"]
        ours_cmd += [f"data.source={args.corpus}", "hydra.run.dir=outputs/run"]
        ours_cmd += [f"train.max_iters={iters}", "optim.lr_decay_iters=null"] if args.iters else []
        ours_cmd += args.overrides
        runs: dict[str, list[Run]] = {"ours": [], "nanogpt": []}
        for r in range(args.rounds):
            for who in ("ours", "nanogpt") if r % 2 == 0 else ("nanogpt", "ours"):
                if who == "ours":
                    shutil.rmtree(ours_dir / "outputs", ignore_errors=True)
                    res = timed(ours_cmd, ours_dir, env, OURS_ITER, OURS_EVAL)
                else:
                    shutil.rmtree(nano / "out-shakespeare-char", ignore_errors=True)
                    res = timed(theirs_cmd, nano, env, NANOGPT_ITER, NANOGPT_EVAL)
                runs[who].append(res)
                if args.verbose:
                    hit = res.reached(args.target)
                    print(
                        f"  round {r} {who}: wall {res.wall_s:.1f} s (stopped {res.stopped_s:.0f} s left out), "
                        f"cpu {res.cpu_s:.1f} s, "
                        f"{res.ms_per_iter:.1f} ms/iter, val {res.evals[-1][1]:.4f} at "
                        f"{res.evals[-1][0]}, {args.target} at {'-' if hit is None else f'{hit:.1f} s'}",
                        flush=True,
                    )
    print(summary(runs, args, iters, same, load_before))


def summary(runs: dict[str, list[Run]], args: argparse.Namespace, iters: int, same: bool, load_before: float) -> str:
    ours, theirs = runs["ours"], runs["nanogpt"]

    def med(rs: list[Run], fn) -> float:
        return statistics.median(fn(r) for r in rs)

    def ratio(fn) -> str:
        per_round = [fn(o) / fn(t) for o, t in zip(ours, theirs, strict=True)]
        return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"

    def ms(r: Run) -> float:
        return r.ms_per_iter

    stopped_s = sum(r.stopped_s for r in ours + theirs)
    stopped = f"{stopped_s:.0f} s stopped by other jobs left out; " if stopped_s else ""
    hits = [o.reached(args.target) for o in ours]
    if all(h is not None for h in hits):
        to_target = [h / t.wall_s for h, t in zip(hits, theirs, strict=True)]
        reach = (
            f"ours reaches {args.target} at {statistics.median(hits):.1f} s = {statistics.median(to_target):.2f}x "
            "nanoGPT's whole run"
        )
    else:
        reach = f"ours did not reach {args.target} in every round"
    return (
        f"vs_nanogpt: {args.experiment} {' '.join(args.overrides)} vs nanoGPT train.py CPU recipe ({iters} iters), "
        f"median of {args.rounds} alternating rounds: wall ours {med(ours, lambda r: r.wall_s):.1f} s vs "
        f"{med(theirs, lambda r: r.wall_s):.1f} s = {ratio(lambda r: r.wall_s)}; cpu {med(ours, lambda r: r.cpu_s):.1f}"
        f" s vs {med(theirs, lambda r: r.cpu_s):.1f} s = {ratio(lambda r: r.cpu_s)}; ms/iter {med(ours, ms):.1f} vs "
        f"{med(theirs, ms):.1f} = {ratio(ms)}; val ours {med(ours, lambda r: r.evals[-1][1]):.4f} at "
        f"{ours[0].evals[-1][0]} vs {med(theirs, lambda r: r.evals[-1][1]):.4f} at {theirs[0].evals[-1][0]}; {reach}; "
        f"same tokens: {'yes' if same else 'NO'}; threads {args.threads or 'default'}; {stopped}"
        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
