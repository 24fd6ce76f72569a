"""What the benchmarks share: where the repo and the real corpus are, the offline environment of the processes
they start, preparing the corpus for the character recipes, and reading a run's metrics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # nanogpt, when a benchmark runs as python benchmarks/<name>.py

from nanogpt.metrics import read_metrics  # noqa: E402

__all__ = ["CORPUS", "ENV", "OURS_ITER", "REPO", "WARMUP", "prepare_char", "read_metrics"]

OURS_ITER = re.compile(r"iter (\d+): loss [\d.]+, ([\d.]+) ms/iter")  # run.py's log line at each log step
WARMUP = 10  # iterations left out of a ms/iter median
CORPUS = str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt")  # the real tiny Shakespeare
# No network waits, no wandb, no transformers chatter, output as it is printed; nanogpt found without an install.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": str(REPO),
}


def prepare_char(data_dir: str, corpus: str, cwd: str) -> None:
    """`prepare.py data=shakespeare_char` from `corpus` into `data_dir`."""
    cmd = [
        sys.executable,
        str(REPO / "prepare.py"),
        "data=shakespeare_char",
        f"paths.data_dir={data_dir}",
        f"data.source={corpus}",
    ]
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)
