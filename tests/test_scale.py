"""Scaling out without Slurm: two torchrun "nodes" on localhost, Hydra sweeps with the basic and the submitit_local
launcher, the sweep report, and a submitit job that is preempted, requeued and resumes exactly."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from tests.conftest import OFFLINE_ENV, REPO, TINY, run_dirs

# One thread per process: two cores shared by several processes otherwise spin against each other.
ENV = {
    **os.environ,
    **OFFLINE_ENV,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
}

# A run long enough to be interrupted mid-way (about 5 ms a step on a free core), short enough for a test.
LONG_ITERS = 800
LONG = [f"train.max_iters={LONG_ITERS}", "train.log_interval=5", "train.eval_interval=250"]


def run(cmd: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def run_py(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return run([sys.executable, str(REPO / "run.py"), *args], cwd, timeout)


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(run_dir: Path) -> list[tuple]:
    keep = ("iter", "loss", "train_loss", "val_loss", "lr")
    return [tuple(r.get(k) for k in keep) for r in metrics(run_dir)]


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def the_sweep(base: Path) -> Path:
    """The one sweep dir under `base`/multirun/<date>/<time>."""
    [sweep] = [p for p in (base / "multirun").glob("*/*") if p.is_dir()]
    return sweep


def assert_close(a: list[tuple], b: list[tuple], tol: float = 1e-5) -> None:
    assert len(a) == len(b), (a, b)
    for ra, rb in zip(a, b, strict=True):
        assert ra[0] == rb[0]
        for x, y in zip(ra[1:], rb[1:], strict=True):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < tol), (ra, rb)


def assert_complete_job(job: Path) -> None:
    assert (job / ".hydra" / "config.yaml").exists() and (job / ".hydra" / "overrides.yaml").exists()
    assert (job / "checkpoints" / "latest" / "model.safetensors").exists()
    assert metrics(job), f"{job} has no metrics"
    assert status(job)["status"] == "completed", status(job)


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def wait_for(what: str, ready, timeout: float = 300, proc: subprocess.Popen | None = None):
    """Poll `ready()` until it returns something truthy; fail with `what` after `timeout` s or if `proc` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the launcher exited {proc.returncode} before {what}\n{out[-3000:]}\n{err[-5000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def trained_to(job: Path, it: int) -> bool:
    """True once `job` has logged a training step at or past `it` (and has not finished)."""
    return (
        any(r.get("loss") is not None and r["iter"] >= it for r in metrics(job)) and not (job / "status.json").exists()
    )


def job_training(base: Path, num: str, it: int) -> Path | None:
    """Job `num` of the sweep under `base` once it has trained to iteration `it`, else None."""
    return next((job for job in base.glob(f"multirun/*/*/{num}") if trained_to(job, it)), None)


def resumed_at(job: Path) -> int:
    """The iteration a requeued job resumed from, as its log says."""
    found = re.findall(r"resumed from \S+ at iter (\d+)", (job / "run.log").read_text())
    assert found, f"{job} never resumed:\n{(job / 'run.log').read_text()[-3000:]}"
    return int(found[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- multi-node DDP ----


def test_two_torchrun_nodes_equal_one_process(tmp_path, char_data):
    common = [*TINY, f"paths.data_dir={char_data}", "train.max_iters=6", "train.grad_accum=2"]
    run_py(*common, cwd=tmp_path / "one")
    [one] = run_dirs(tmp_path / "one")

    # Two "nodes" on localhost, one process each: two torchrun agents meeting at the same master port.
    (tmp_path / "two").mkdir()
    port = free_port()
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={r}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                str(REPO / "run.py"),
                *common,
            ],
            cwd=tmp_path / "two",
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for r, node in enumerate(nodes):
        out, err = node.communicate(timeout=600)
        assert node.returncode == 0, f"node {r} exited {node.returncode}\n{out[-3000:]}\n{err[-5000:]}"

    [two] = run_dirs(tmp_path / "two")  # one run dir for the ranks of both nodes
    assert status(two)["status"] == "completed"
    assert_close(losses(one), losses(two))
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


# ---- sweeps and their report ----


def test_basic_sweep_runs_every_combination_and_reports(tmp_path, char_data):
    run_py(
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
    out = run([sys.executable, "-m", "nanogpt.sweep", str(sweep)], cwd=tmp_path).stdout
    assert "| 0 | `optim.lr=0.001 model.n_layer=1` | completed |" in out
    assert read_csv(sweep / "report.csv") == rows and (sweep / "val_loss.png").exists()


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path, char_data):
    # n_embd=63 does not divide into 2 heads: job 0 fails its validation, job 1 must still run.
    run_py("-m", *TINY, f"paths.data_dir={char_data}", "train.max_iters=2", "model.n_embd=63,64", cwd=tmp_path)
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
    proc = subprocess.run(
        [sys.executable, "-m", "nanogpt.sweep", str(tmp_path)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {tmp_path} holds no job dirs (0/, 1/, ...): pass a sweep dir, multirun/<date>/<time>"
    )


# ---- the submitit_local launcher ----


def test_submitit_local_sweep(tmp_path, char_data):
    run_py(
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
    # Two identical jobs (`name` changes nothing in training): job 0 is preempted, job 1 is the reference.
    launcher = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "run.py"),
            "-m",
            "hydra/launcher=local",
            *TINY,
            f"paths.data_dir={char_data}",
            *LONG,
            "name=preempted,reference",
        ],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job = wait_for("job 0 to train", lambda: job_training(tmp_path, "0", 20), proc=launcher)
        # What submitit's LocalJob._interrupt() does: the preemption signal to the job's process (its pid is in
        # the run lock).
        os.kill(int((job / ".lock").read_text()), signal.SIGUSR2)
        out, err = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}"
    sweep = job.parent
    for j in ("0", "1"):
        assert_complete_job(sweep / j)
    assert 20 <= resumed_at(sweep / "0") < LONG_ITERS  # from the checkpoint saved on the signal, not from scratch
    a, b = weights(sweep / "0"), weights(sweep / "1")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
