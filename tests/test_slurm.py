"""Against a real one-node Slurm cluster: a sweep sent as a job array, DDP across the tasks of a Slurm job, and a
job that is preempted mid-run, requeued by submitit, and ends with the weights of an uninterrupted run.

The cluster is the one `.ci/run` starts (`SLURM_CONF` in the environment), or one this module starts itself with
../shared/tools/slurm/start-slurm.sh when running as root (and stops again). Otherwise every test here skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import (
    LONG_ITERS,
    REPO,
    TINY,
    assert_close,
    assert_complete_job,
    assert_preempted_job_ended_as_the_reference,
    job_0_training,
    losses,
    process_env,
    read_csv,
    run_command,
    start_preemptible_sweep,
    status,
    the_sweep,
    train,
)

# One cluster per module (started and stopped by the fixture below): its tests share one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("slurm")

SLURM_TOOLS = REPO.parent / "shared" / "tools" / "slurm"

# Short time limits make submitit's time-out signal come early (it is sent signal_delay_s before the limit), and
# with timeout_min <= 10 every signal counts as a time-out, so allow requeues (see the tools' README).
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.signal_delay_s=30",
    "hydra.launcher.max_num_timeout=3",
    "hydra.launcher.cpus_per_task=1",
]


def _cluster_up(env: dict) -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip() in ("idle", "mixed", "allocated") for s in out.stdout.split())


@pytest.fixture(scope="module")
def slurm_env():
    """The environment of a test that talks to the cluster (SLURM_CONF set), once the cluster is up."""
    env = process_env()
    if os.environ.get("SLURM_CONF") and _cluster_up(env):
        yield env
        return
    ci_dir = os.environ.get("SLURM_CI_DIR", "/tmp/slurm-ci")
    conf = os.path.join(ci_dir, "etc", "slurm.conf")
    env = process_env(SLURM_CONF=conf, SLURM_CI_DIR=ci_dir)
    if os.path.exists(conf) and shutil.which("sinfo") and _cluster_up(env):
        yield env  # started earlier, e.g. by .ci/run: not ours to stop
        return
    if os.geteuid() != 0:
        pytest.skip(
            "no Slurm cluster: set SLURM_CONF to a running one, or run as root to start one with start-slurm.sh"
        )
    if not (SLURM_TOOLS / "start-slurm.sh").exists():
        pytest.skip(f"no Slurm cluster and no {SLURM_TOOLS / 'start-slurm.sh'} to start one")
    proc = subprocess.run(
        ["bash", str(SLURM_TOOLS / "start-slurm.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0 or not _cluster_up(env):
        pytest.skip(f"start-slurm.sh could not start a cluster (exit {proc.returncode}): {proc.stderr[-500:]}")
    try:
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_TOOLS / "stop-slurm.sh")], env=env, capture_output=True, timeout=300)


def test_slurm_sweep_is_a_job_array_with_a_dir_per_job(tmp_path, char_data, slurm_env):
    args = ["-m", *SLURM, *TINY, f"paths.data_dir={char_data}", "train.max_iters=4", "optim.lr=1e-3,3e-3"]
    run_command([sys.executable, str(REPO / "run.py"), *args], tmp_path, env=slurm_env)
    sweep = the_sweep(tmp_path)
    for job in ("0", "1"):
        assert_complete_job(sweep / job)
    # One array: submitit's logs land in .submitit/<array id>_<task>/.
    ids = sorted(p.name.split("_") for p in (sweep / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(ids) == 2 and ids[0][0] == ids[1][0] and [i[1] for i in ids] == ["0", "1"], ids
    assert [r["status"] for r in read_csv(sweep / "report.csv")] == ["completed", "completed"]


def test_ddp_across_the_tasks_of_a_slurm_job_equals_one_process(tmp_path, char_data, slurm_env):
    common = ["train.max_iters=6", "train.grad_accum=2"]
    one = train(tmp_path, char_data, *common)
    # Two tasks of one job: rank, world size and master address come from Slurm's environment.
    args = ["-m", *SLURM, "hydra.launcher.tasks_per_node=2", *TINY, f"paths.data_dir={char_data}", *common]
    run_command([sys.executable, str(REPO / "run.py"), *args], tmp_path, env=slurm_env)
    job = the_sweep(tmp_path) / "0"
    assert_complete_job(job)
    assert_close(losses(one), losses(job))
    assert len(list((job.parent / ".submitit").glob("*/*_1_log.err"))) == 1  # task 1 ran


def test_preempted_slurm_job_is_requeued_and_ends_as_if_never_stopped(tmp_path, char_data, slurm_env, monkeypatch):
    import submitit

    name = f"nanogpt-test-{os.getpid()}"
    launcher = start_preemptible_sweep(tmp_path, char_data, *SLURM, f"hydra.launcher.name={name}", env=slurm_env)
    try:
        job = job_0_training(tmp_path, launcher)
        [folder] = [p for p in (job.parent / ".submitit").glob("*_0") if p.is_dir()]
        # Preemption as submitit simulates it: scancel --signal SIGTERM, then --signal USR2, to the job's processes.
        monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
        submitit.SlurmJob(folder=folder, job_id=folder.name)._interrupt()
        out, err = launcher.communicate(timeout=900)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            subprocess.run(["scancel", "--name", name], env=slurm_env, timeout=60)
    assert launcher.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}"
    assert_preempted_job_ended_as_the_reference(job.parent)  # resumed in the same dir
    log = "".join(p.read_text() for p in folder.glob("*_0_log.*"))  # submitit logs INFO to .out, warnings to .err
    assert "Requeued job" in log, log[-3000:]
    assert status(job.parent / "0")["iter"] == LONG_ITERS
