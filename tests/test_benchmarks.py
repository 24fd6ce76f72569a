"""The GPU benchmark cannot run for real on a CPU-only CI machine; its --smoke mode runs the same machinery (random
OpenWebText-shaped data, microbatch fallback, run.py, metrics, the shakespeare_char recipe) on a tiny CPU model so
that it is ready the day a GPU is lent."""

from __future__ import annotations

import re

from tests.helpers import run_entry


def test_gpu_benchmark_smoke_run(tmp_path, shakespeare):
    args = ["--smoke", "--microbatches", "4", "--iters", "4", "--shakespeare", str(shakespeare)]
    proc = run_entry("benchmarks/gpu_mfu.py", *args, cwd=tmp_path)
    line = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"gpu_mfu: CPU \(smoke run, not a figure\), tiny model.*: microbatch 4 x 2: [\d,]+ tokens/s", line)
    assert re.search(r"shakespeare_char: \d+ s, best val \d\.\d{4}$", line)


def test_gpu_benchmark_says_it_needs_a_gpu(tmp_path):
    proc = run_entry("benchmarks/gpu_mfu.py", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "needs a CUDA GPU" in proc.stderr
