"""Shared fixtures: the real corpus, and shakespeare_char prepared from it once per session. Every test process runs
offline (the environment below); the plain helpers are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import OFFLINE_ENV, SHAKESPEARE, run_entry

os.environ.update(OFFLINE_ENV)


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
