"""Shared fixtures: the real corpus, and shakespeare_char prepared from it once per session. Every test process runs
offline (the environment below); the plain helpers are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import OFFLINE_ENV, SHAKESPEARE, SHAKESPEARE_DEFAULT, run_entry

os.environ.update(OFFLINE_ENV)

MAX_WORKERS = 4  # each worker's tests start torch processes of up to ~1.5 GB (GPT-2 124M, two-process FSDP)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject.toml): a worker per core, at most MAX_WORKERS. Most tests run a tiny model in a
    subprocess, whose start-up and small ops keep one core busy: two workers on two cores halve the suite's time."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    if not SHAKESPEARE.exists():
        pytest.skip(
            f"{SHAKESPEARE} is missing: the real tiny Shakespeare is looked for at {SHAKESPEARE_DEFAULT}, "
            "or NANOGPT_SHAKESPEARE=<path to input.txt> points at a copy"
        )
    return SHAKESPEARE


@pytest.fixture(scope="session", autouse=True)
def inductor_cache(tmp_path_factory) -> Path:
    """Compiled graphs go to a session dir, never into the user's ~/.cache (nanogpt/inductor.py's default)."""
    path = tmp_path_factory.mktemp("inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def char_data(tmp_path_factory, shakespeare) -> Path:
    """A data root holding shakespeare_char prepared from the real corpus (prepared once per session)."""
    root = tmp_path_factory.mktemp("data")
    run_entry("prepare.py", "data=shakespeare_char", f"data.source={shakespeare}", f"paths.data_dir={root}", cwd=root)
    return root


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
