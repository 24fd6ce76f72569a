"""FSDP on 2 gloo processes: the same training as 1 process, and checkpoints that resume, sample and export."""

from __future__ import annotations

from tests.helpers import (
    TINY,
    assert_close,
    assert_runs_agree,
    assert_same_weights,
    losses,
    run_entry,
    status,
    torchrun,
    train,
    weights,
)


def test_fsdp_two_processes_equal_one_and_resume(tmp_path, char_data):
    common = ["train.grad_accum=2", "train.eval_interval=3", "optim.lr_decay_iters=6"]
    one = train(tmp_path / "one", char_data, *common, "train.max_iters=6")
    fsdp_args = [*TINY, f"paths.data_dir={char_data}", *common, "train.parallel=fsdp"]
    fsdp = torchrun(tmp_path / "fsdp", *fsdp_args, "train.max_iters=6")
    assert_runs_agree(one, fsdp)  # the weights saved whole by rank 0, in the same format

    # Stopped at 3 and resumed under FSDP: the same as straight through.
    half = torchrun(tmp_path / "half", *fsdp_args, "train.max_iters=3")
    torchrun(tmp_path / "half", f"resume={half}", "train.max_iters=6")
    assert_close(losses(fsdp), losses(half))
    assert_same_weights(weights(fsdp), weights(half), tol=1e-6)

    out = run_entry("sample.py", f"run={fsdp}", "max_new_tokens=10", "num_samples=1", cwd=tmp_path).stdout
    assert out.count("---------------") == 1
    # An FSDP checkpoint resumed without FSDP says what to do.
    proc = run_entry("run.py", f"resume={fsdp}", "train.max_iters=8", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "with train.parallel=fsdp" in proc.stderr
    assert status(fsdp)["status"] == "completed"
