"""Shared fixtures: the real entry points run as subprocesses in temporary dirs, offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# Offline and quiet: no hub retries, no wandb prompts, deterministic threads.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "NANOGPT_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",  # tiny models: one thread is fastest, and no oversubscription on a busy machine
}
os.environ.update(OFFLINE_ENV)

# Flags for a model and loop that train in seconds on a CPU.
TINY = [
    "model=tiny",
    "device=cpu",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_iters=2",
    "train.log_interval=1",
    "optim.warmup_iters=2",
]


def run_entry(script: str, *args: str, cwd: Path, check: bool = True, timeout: float = 600, env: dict | None = None):
    """Run `python <repo>/<script> args...` in `cwd`; returns the CompletedProcess (text output)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env={**os.environ, **OFFLINE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(f"{SHAKESPEARE} is missing (it lives in ../shared/data beside the repo)")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def char_data(tmp_path_factory, shakespeare) -> Path:
    """A data root holding shakespeare_char prepared from the real corpus (prepared once per session)."""
    root = tmp_path_factory.mktemp("data")
    run_entry("prepare.py", "data=shakespeare_char", f"data.source={shakespeare}", f"paths.data_dir={root}", cwd=root)
    return root


def run_dirs(base: Path, name: str = "default") -> list[Path]:
    return sorted(p for p in (base / "outputs" / name).iterdir() if not p.is_symlink())


@pytest.fixture(scope="session")
def hellaswag_file(tmp_path_factory) -> Path:
    """A 12-example file in HellaSwag's format (the fields we read, and one of the original's we ignore). The first
    example's context is longer than a 32-token block, so it is cropped; the second has WikiHow's kind of markup,
    characters a Shakespeare character vocabulary lacks."""
    import json
    import random

    words = "the a man woman dog cat runs walks into room kitchen ball throws catches slowly and sits on chair"
    rng = random.Random(0)
    sentence = lambda n: " ".join(rng.choice(words.split()) for _ in range(n))
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            ctx = "[title] Step 2. " * (i == 1) + sentence(40 if i == 0 else rng.randint(4, 14)).capitalize() + "."
            endings = [sentence(rng.randint(2, 10)) + "." for _ in range(4)]
            f.write(json.dumps({"ind": i, "ctx": ctx, "endings": endings, "label": rng.randint(0, 3)}) + "\n")
    return path


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """The process failed with exactly one `error: ...` line on stderr, no traceback, naming `needles`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def hf_env(tmp: Path) -> dict[str, str]:
    """`datasets` caches what it loads: keep that cache inside the test's temp dir."""
    return {"HF_DATASETS_CACHE": str(tmp / "hf-cache")}
