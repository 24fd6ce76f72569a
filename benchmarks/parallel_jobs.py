"""A sweep's jobs on one machine: `hydra/launcher=local` (jobs at once, each with its share of the cores) against
the basic launcher (one job after the other, each with all the cores), alternating, medians.

    python benchmarks/parallel_jobs.py [--rounds 3] [--iters 300] [--jobs 2 4]

Each sweep is `python run.py -m experiment=shakespeare_char_cpu train.max_iters=<iters> optim.lr=<N values>` on
the real corpus, timed from launch to exit, with no OMP_NUM_THREADS (the framework chooses). Prints one line per
job count and the ratio basic / local of the medians (issue 29: >= 1.4 for 2 jobs on 2 cores, >= 1 for 4):

    parallel_jobs: 2 jobs, local 9.1 s vs basic 15.4 s: 1.69x; 4 jobs, ...; 2 cores, median of 3, load 0.4 -> 2.0
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import CORPUS, ENV, REPO, prepare_char  # benchmarks/ is on sys.path as a script

LRS = ("1e-3", "2e-3", "3e-3", "4e-3", "5e-3", "6e-3", "7e-3", "8e-3")
LAUNCHERS = {"basic": [], "local": ["hydra/launcher=local"]}


def sweep_seconds(launcher: str, jobs: int, iters: int, data_dir: str, cwd: str) -> float:
    """Wall time of one sweep of `jobs` learning rates under `launcher`."""
    cmd = [sys.executable, str(REPO / "run.py"), "-m", *LAUNCHERS[launcher], "experiment=shakespeare_char_cpu"]
    cmd += [f"train.max_iters={iters}", f"optim.lr={','.join(LRS[:jobs])}", f"paths.data_dir={data_dir}"]
    env = {k: v for k, v in ENV.items() if k != "OMP_NUM_THREADS"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--jobs", type=int, nargs="+", default=[2, 4], help="sweep sizes to time")
    ap.add_argument("--corpus", default=CORPUS)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "data")
        prepare_char(data_dir, args.corpus, tmp)
        times: dict[tuple[int, str], list[float]] = {}
        for r in range(args.rounds):
            for jobs in args.jobs:
                order = ("basic", "local") if r % 2 == 0 else ("local", "basic")  # alternate who goes first
                for launcher in order:
                    seconds = sweep_seconds(launcher, jobs, args.iters, data_dir, tmp)
                    times.setdefault((jobs, launcher), []).append(seconds)
    parts = []
    for jobs in args.jobs:
        local, basic = (statistics.median(times[jobs, name]) for name in ("local", "basic"))
        parts.append(f"{jobs} jobs, local {local:.1f} s vs basic {basic:.1f} s: {basic / local:.2f}x")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"parallel_jobs: {'; '.join(parts)}; {args.iters} iters each, {cores} cores, median of {args.rounds}, "
        f"load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
