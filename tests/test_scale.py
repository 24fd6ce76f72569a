"""Scaling out without Slurm: two torchrun "nodes" on localhost, Hydra sweeps with the basic and the submitit_local
launcher, the sweep report, and a submitit job that is preempted, requeued and resumes exactly."""

from __future__ import annotations

import os
import signal
import sys

from tests.helpers import (
    REPO,
    TINY,
    assert_complete_job,
    assert_preempted_job_ended_as_the_reference,
    assert_runs_agree,
    free_port,
    job_0_training,
    popen_command,
    read_csv,
    run_command,
    run_dirs,
    run_entry,
    start_preemptible_sweep,
    status,
    the_sweep,
    torchrun_cmd,
    train,
)

# ---- multi-node DDP ----


def test_two_torchrun_nodes_equal_one_process(tmp_path, char_data):
    common = ["train.max_iters=6", "train.grad_accum=2"]
    one = train(tmp_path / "one", char_data, *common)

    # Two "nodes" on localhost, one process each: two torchrun agents meeting at the same master port.
    (tmp_path / "two").mkdir()
    port = free_port()
    args = [*TINY, f"paths.data_dir={char_data}", *common]
    nodes = [popen_command(torchrun_cmd(*args, port=port, nproc=1, node=r), tmp_path / "two") for r in (0, 1)]
    for r, node in enumerate(nodes):
        out, err = node.communicate(timeout=600)
        assert node.returncode == 0, f"node {r} exited {node.returncode}\n{out[-3000:]}\n{err[-5000:]}"

    [two] = run_dirs(tmp_path / "two")  # one run dir for the ranks of both nodes
    assert status(two)["status"] == "completed"
    assert_runs_agree(one, two)


# ---- sweeps and their report ----


def test_basic_sweep_runs_every_combination_and_reports(tmp_path, char_data):
    run_entry(
        "run.py",
        "-m",
        *TINY,
        f"paths.data_dir={char_data}",
        "train.max_iters=4",
        "train.eval_interval=2",
        "optim.lr=1e-3,3e-3",
        "model.n_layer=1,2",
        cwd=tmp_path,
    )
    sweep = the_sweep(tmp_path)
    jobs = sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    for job in jobs:
        assert_complete_job(job)
    combos = {
        tuple(o for o in (j / ".hydra" / "overrides.yaml").read_text().split() if "lr=" in o or "n_layer" in o)
        for j in jobs
    }
    assert combos == {(f"optim.lr={lr}", f"model.n_layer={n}") for lr in ("0.001", "0.003") for n in (1, 2)}

    # The Hydra callback wrote the report when the sweep ended.
    rows = read_csv(sweep / "report.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert rows[3]["overrides"] == "optim.lr=0.003 model.n_layer=2"
    for row, job in zip(rows, jobs, strict=True):
        assert row["status"] == "completed" and row["iter"] == "4"
        assert float(row["best_val_loss"]) == status(job)["best_val_loss"]
        assert float(row["last_train_loss"]) == status(job)["last_train_loss"]
        assert float(row["tokens_per_s"]) > 0 and float(row["wall_s"]) > 0
    report = (sweep / "report.md").read_text()
    assert "4 of 4 jobs completed" in report and "| 3 | `optim.lr=0.003 model.n_layer=2` | completed |" in report
    assert (sweep / "val_loss.png").read_bytes()[:4] == b"\x89PNG"

    # And the command line writes the same report again.
    for f in ("report.md", "report.csv", "val_loss.png"):
        (sweep / f).unlink()
    out = run_command([sys.executable, "-m", "nanogpt.sweeps", str(sweep)], tmp_path).stdout
    assert "| 0 | `optim.lr=0.001 model.n_layer=1` | completed |" in out
    assert read_csv(sweep / "report.csv") == rows and (sweep / "val_loss.png").exists()


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, char_data):
    # n_embd=63 does not divide into 2 heads: job 0 fails its validation, job 1 must still run.
    run_entry(
        "run.py", "-m", *TINY, f"paths.data_dir={char_data}", "train.max_iters=2", "model.n_embd=63,64", cwd=tmp_path
    )
    sweep = the_sweep(tmp_path)
    failed = status(sweep / "0")
    assert failed["status"] == "failed" and "model.n_embd=63" in failed["error"]
    assert_complete_job(sweep / "1")
    rows = read_csv(sweep / "report.csv")
    assert [(r["overrides"], r["status"]) for r in rows] == [
        ("model.n_embd=63", "failed"),
        ("model.n_embd=64", "completed"),
    ]
    assert "model.n_embd=63 must be a positive multiple" in (sweep / "report.md").read_text()


def test_sweep_report_of_a_dir_without_jobs_is_one_line_error(tmp_path):
    proc = run_command([sys.executable, "-m", "nanogpt.sweeps", str(tmp_path)], REPO, check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {tmp_path} holds no job dirs (0/, 1/, ...): pass a sweep dir, multirun/<date>/<time>"
    )


# ---- the submitit_local launcher ----


def test_submitit_local_sweep(tmp_path, char_data):
    run_entry(
        "run.py",
        "-m",
        "hydra/launcher=local",
        *TINY,
        f"paths.data_dir={char_data}",
        "train.max_iters=4",
        "optim.lr=1e-3,3e-3",
        cwd=tmp_path,
    )
    sweep = the_sweep(tmp_path)
    for job in ("0", "1"):
        assert_complete_job(sweep / job)
    assert list((sweep / ".submitit").glob("*/*_log.out")), "no submitit logs"
    assert [r["status"] for r in read_csv(sweep / "report.csv")] == ["completed", "completed"]


def test_submitit_local_preempted_job_is_requeued_and_ends_as_if_never_stopped(tmp_path, char_data):
    launcher = start_preemptible_sweep(tmp_path, char_data, "hydra/launcher=local")
    try:
        job = job_0_training(tmp_path, launcher)
        # What submitit's LocalJob._interrupt() does: the preemption signal to the job's process (its pid is in
        # the run lock).
        os.kill(int((job / ".lock").read_text()), signal.SIGUSR2)
        out, err = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}"
    assert_preempted_job_ended_as_the_reference(job.parent)
