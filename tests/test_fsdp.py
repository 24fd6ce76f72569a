"""FSDP on 2 gloo processes: the same training as 1 process, and checkpoints that resume, sample and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import OFFLINE_ENV, REPO, TINY, run_dirs, run_entry
from tests.test_train import free_port, losses, train, weights


def torchrun(cwd: Path, *args: str) -> Path:
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        str(REPO / "run.py"),
        *args,
    ]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dirs(cwd)[-1] if (cwd / "outputs").exists() else cwd


def close(a: list[tuple], b: list[tuple]) -> bool:
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if (x is None) != (y is None) or (x is not None and abs(x - y) > 1e-5):
                return False
    return True


def test_fsdp_two_processes_equal_one_and_resume(tmp_path, char_data):
    common = [
        *TINY,
        f"paths.data_dir={char_data}",
        "train.grad_accum=2",
        "train.eval_interval=3",
        "optim.lr_decay_iters=6",
    ]
    one = train(tmp_path / "one", char_data, *common[len(TINY) :], "train.max_iters=6")
    fsdp = torchrun(tmp_path / "fsdp", *common, "train.parallel=fsdp", "train.max_iters=6")
    assert close(losses(one), losses(fsdp))
    a, b = weights(one), weights(fsdp)  # saved whole by rank 0, in the same format
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)

    # Stopped at 3 and resumed under FSDP: the same as straight through.
    half = torchrun(tmp_path / "half", *common, "train.parallel=fsdp", "train.max_iters=3")
    torchrun(tmp_path / "half", f"resume={half}", "train.max_iters=6")
    assert close(losses(fsdp), losses(half))
    c = weights(half)
    assert all((b[k] - c[k]).abs().max() < 1e-6 for k in b)

    out = run_entry("sample.py", f"run={fsdp}", "max_new_tokens=10", "num_samples=1", cwd=tmp_path).stdout
    assert out.count("---------------") == 1
    # An FSDP checkpoint resumed without FSDP says what to do.
    proc = run_entry("run.py", f"resume={fsdp}", "train.max_iters=8", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "with train.parallel=fsdp" in proc.stderr
    assert json.loads((fsdp / "status.json").read_text())["status"] == "completed"
