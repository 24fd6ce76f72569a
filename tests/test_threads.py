"""Each process's CPU threads (nanogpt/threads.py): its share of the cores among the jobs run at once, what an
explicit OMP_NUM_THREADS or device.threads says instead, the busy-machine line, and the local launcher running
as many jobs at once as cores, each with one thread, read back from the runs' logs."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from nanogpt import threads
from nanogpt.config import DeviceConfig, RunConfig
from nanogpt.errors import UserError
from nanogpt.validation import validate
from tests.helpers import REPO, TINY, assert_runs_agree, process_env, run_command, run_dirs, the_sweep, train


def test_share_is_the_cores_over_the_jobs_and_explicit_settings_win():
    assert threads.choose(None, {}, cores=2).describe() == "threads: 2 of 2 cores"
    two_jobs = {threads.PARALLEL_JOBS: "2", threads.PARALLEL_CORES: "2"}
    assert threads.choose(None, two_jobs).describe() == "threads: 1 of 2 cores, 2 jobs in parallel"
    assert threads.choose(None, {threads.PARALLEL_JOBS: "4"}, cores=2).threads == 1  # at least one
    assert threads.choose(None, {"LOCAL_WORLD_SIZE": "4"}, cores=16).threads == 4  # torchrun's ranks of a node
    omp = threads.choose(None, {**two_jobs, "OMP_NUM_THREADS": "2"})
    assert omp.describe() == "threads: 2 (OMP_NUM_THREADS=2) of 2 cores, 2 jobs in parallel"
    asked = threads.choose(3, {**two_jobs, "OMP_NUM_THREADS": "2"})
    assert asked.describe() == "threads: 3 (device.threads=3) of 2 cores, 2 jobs in parallel"
    with pytest.raises(UserError, match="OMP_NUM_THREADS='lots'"):
        threads.choose(None, {"OMP_NUM_THREADS": "lots"}, cores=2)


def test_allowed_cores_follow_cgroup_quota_and_slurm():
    assert threads.cgroup_cores("max 100000") is None
    assert threads.cgroup_cores("150000 100000") == 1
    assert threads.cgroup_cores("400000 100000\n") == 4
    affinity = len(os.sched_getaffinity(0))
    assert threads.allowed_cores({}, cpu_max="max 100000") == affinity
    assert threads.allowed_cores({"SLURM_CPUS_PER_TASK": "1"}, cpu_max="") == 1
    assert threads.ranks_per_node({"SLURM_NTASKS_PER_NODE": "2"}) == 2
    assert threads.ranks_per_node({"SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "4"}) == 1


def test_busy_machine_is_one_line_only_when_we_would_add_threads():
    assert threads.running_threads("0.50 0.40 0.30 3/456 789") == 3
    choice = threads.choose(None, {}, cores=2)
    note = threads.busy_note(3, choice)  # two others and this reader on two cores
    assert note is not None and "device.threads=1" in note and "\n" not in note
    assert threads.busy_note(2, choice) is None
    assert threads.busy_note(9, threads.choose(1, {}, cores=2)) is None  # one thread already
    siblings = threads.choose(None, {threads.PARALLEL_JOBS: "2"}, cores=4)
    assert threads.busy_note(4, siblings) is None  # us, our sibling and two more on four cores


def test_apply_sets_torchs_pool():
    before = torch.get_num_threads()
    try:
        assert threads.apply(2).threads == 2 and torch.get_num_threads() == 2
        assert threads.apply(1).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_jobs_at_once_and_their_cores():
    assert threads.jobs_at_once(4, cores=2, cores_per_job=1, asked=None) == 2
    assert threads.jobs_at_once(1, cores=8, cores_per_job=1, asked=None) == 1
    assert threads.jobs_at_once(4, cores=8, cores_per_job=4, asked=None) == 2
    assert threads.jobs_at_once(4, cores=2, cores_per_job=1, asked=4) == 4
    assert threads.core_slots([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert threads.core_slots([0, 1], 3) == [[0], [1], [0]]


def _threads_line(job_dir) -> str:
    return next(line for line in (job_dir / "run.log").read_text().splitlines() if "threads: " in line)


def _two_cores():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two cores")
    return lambda: os.sched_setaffinity(0, cpus[:2])


def test_parallel_local_jobs_get_one_thread_each_unless_told(tmp_path, char_data):
    """On two cores, hydra/launcher=local runs both jobs at once, each with one thread, with no OMP_NUM_THREADS;
    device.threads=3 in one job wins there. A single run with OMP_NUM_THREADS=2 takes two."""
    import subprocess

    env = {k: v for k, v in process_env().items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=local", *TINY, f"paths.data_dir={char_data}"]
    cmd += ["train.max_iters=2", "device.threads=null,3"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, preexec_fn=_two_cores())
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = the_sweep(tmp_path)
    assert _threads_line(sweep / "0").endswith("threads: 1 of 2 cores, 2 jobs in parallel")
    assert _threads_line(sweep / "1").endswith("threads: 3 (device.threads=3) of 2 cores, 2 jobs in parallel")

    single = tmp_path / "single"
    single.mkdir()
    run_command(
        [sys.executable, str(REPO / "run.py"), *TINY, f"paths.data_dir={char_data}", "train.max_iters=2"],
        single,
        env={**env, "OMP_NUM_THREADS": "2"},
    )
    assert "threads: 2 (OMP_NUM_THREADS=2) of " in _threads_line(run_dirs(single, "default")[-1])


def test_device_threads_must_be_positive_and_the_suite_runs_one_thread():
    with pytest.raises(UserError, match=r"device.threads=0 must be >= 1"):
        validate(RunConfig(device=DeviceConfig(threads=0)))
    assert torch.get_num_threads() == 1  # conftest's OMP_NUM_THREADS=1: xdist workers do not oversubscribe


def test_losses_do_not_depend_on_the_threads_beyond_float_order(tmp_path, char_data):
    one = train(tmp_path / "one", char_data, "train.max_iters=6", "device.threads=1")
    two = train(tmp_path / "two", char_data, "train.max_iters=6", "device.threads=2")
    assert_runs_agree(one, two, tol=1e-4)
