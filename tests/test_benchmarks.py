"""The GPU benchmark cannot run for real on a CPU-only CI machine; its --smoke mode runs the same machinery (random
OpenWebText-shaped data, microbatch fallback, run.py, metrics, the shakespeare_char recipe) on a tiny CPU model so
that it is ready the day a GPU is lent."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import OFFLINE_ENV, REPO


def test_gpu_benchmark_smoke_run(tmp_path, shakespeare):
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "gpu_mfu.py"),
        "--smoke",
        "--microbatches",
        "4",
        "--iters",
        "4",
        "--shakespeare",
        str(shakespeare),
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"gpu_mfu: CPU \(smoke run, not a figure\), tiny model.*: microbatch 4 x 2: [\d,]+ tokens/s", line)
    assert re.search(r"shakespeare_char: \d+ s, best val \d\.\d{4}$", line)


def test_gpu_benchmark_says_it_needs_a_gpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_mfu.py")],
        cwd=tmp_path,
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1 and "needs a CUDA GPU" in proc.stderr
