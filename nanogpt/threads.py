"""How many intra-op threads this process gets: its share of the cores it may use, divided among the jobs that run
beside it by our own doing (parallel local jobs, DDP ranks of one node), at least one. An explicit OMP_NUM_THREADS
or `device.threads` wins. Two jobs that each start a thread per core put twice as many spinning OpenMP threads as
cores on the machine, and each runs several times slower than alone (issue 29, docs/BENCHMARKS.md).

Pure functions over the environment and /proc, plus `apply()`, the one that sets torch's pool; no torch at import,
so the local launcher plans its jobs with the same arithmetic."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from nanogpt.errors import UserError

# Set by our local launcher (hydra_plugins/nanogpt_local_launcher) in each job: how many jobs run at once, and on
# how many cores in all. A job pinned to its own cores sees only those in its affinity; these say what it shares.
PARALLEL_JOBS = "NANOGPT_PARALLEL_JOBS"
PARALLEL_CORES = "NANOGPT_PARALLEL_CORES"

CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


@dataclass(frozen=True)
class Choice:
    threads: int  # intra-op threads of this process
    cores: int  # cores the jobs that run at once share
    jobs: int  # processes that run at once on them (ours: parallel jobs x ranks per job)
    source: str  # "share", "OMP_NUM_THREADS" or "device.threads"
    busy: str | None = None  # one line when the machine was already loaded at start

    def describe(self) -> str:
        """`threads: 1 of 2 cores, 2 jobs in parallel`, and where an explicit setting decided it."""
        given = "" if self.source == "share" else f" ({self.source}={self.threads})"
        beside = f", {self.jobs} jobs in parallel" if self.jobs > 1 else ""
        return f"threads: {self.threads}{given} of {self.cores} cores{beside}"


def cgroup_cores(cpu_max: str) -> int | None:
    """Whole cores a cgroup v2 `cpu.max` line ("<quota> <period>", or "max <period>") allows; None: no limit."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return max(1, int(fields[0]) // int(fields[1]))


def _leading_int(value: str | None) -> int | None:
    """Slurm's counts may read "2(x3)"; the leading number is this node's."""
    digits = ""
    for ch in (value or "").strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def allowed_cores(env: Mapping[str, str] = os.environ, cpu_max: str | None = None) -> int:
    """The cores this process may run on: its affinity, capped by the cgroup's CPU quota and Slurm's
    SLURM_CPUS_PER_TASK (a task's own count where Slurm does not bind tasks to cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cpu_max is None:
        try:
            with open(CGROUP_CPU_MAX) as f:
                cpu_max = f.read()
        except OSError:
            cpu_max = ""
    limits = [cgroup_cores(cpu_max), _leading_int(env.get("SLURM_CPUS_PER_TASK"))]
    return min([cores, *(n for n in limits if n)])


def ranks_per_node(env: Mapping[str, str] = os.environ) -> int:
    """Processes of one launch on this node: torchrun's LOCAL_WORLD_SIZE, our local launcher's tasks per job, or
    Slurm's tasks per node (unless SLURM_CPUS_PER_TASK already gave each task its own count)."""
    for key in ("LOCAL_WORLD_SIZE", "SUBMITIT_LOCAL_NTASKS"):
        if key in env:
            return max(1, _leading_int(env[key]) or 1)
    if "SLURM_CPUS_PER_TASK" not in env:
        return max(1, _leading_int(env.get("SLURM_NTASKS_PER_NODE")) or 1)
    return 1


def omp_num_threads(env: Mapping[str, str] = os.environ) -> int | None:
    """OMP_NUM_THREADS as the user set it (its first level, for a nested "4,2"), or None."""
    value = env.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    if not first.isdigit() or int(first) < 1:
        raise UserError(f"OMP_NUM_THREADS={value!r} is not a number of threads: set a positive integer or unset it")
    return int(first)


def choose(asked: int | None, env: Mapping[str, str] = os.environ, cores: int | None = None) -> Choice:
    """This process's threads: `device.threads`, else OMP_NUM_THREADS, else its share of the cores."""
    shared = _leading_int(env.get(PARALLEL_CORES))
    cores = cores if cores is not None else shared or allowed_cores(env)
    jobs = max(1, _leading_int(env.get(PARALLEL_JOBS)) or 1) * ranks_per_node(env)
    if asked is not None:
        return Choice(asked, cores, jobs, "device.threads")
    omp = omp_num_threads(env)
    if omp is not None:
        return Choice(omp, cores, jobs, "OMP_NUM_THREADS")
    return Choice(max(1, cores // jobs), cores, jobs, "share")


def running_threads(loadavg: str) -> int:
    """The runnable threads in /proc/loadavg ("0.50 0.40 0.30 3/456 789": 3, this reader among them)."""
    return int(loadavg.split()[3].split("/")[0])


def busy_note(running: int, choice: Choice) -> str | None:
    """One line when more threads were runnable at start than there are cores (our own parallel jobs aside),
    and this process would add several threads of its own to them; None otherwise."""
    others = running - choice.jobs  # we and our siblings are among the runnable ones (at most)
    if choice.threads <= 1 or running - (choice.jobs - 1) <= choice.cores:
        return None
    return (
        f"the machine is busy: {max(others, 1)} other runnable threads on {choice.cores} cores at start; with "
        f"{choice.threads} threads this run may be many times slower: set device.threads=1 (or OMP_NUM_THREADS=1)"
    )


def _running_now(samples: int = 3, gap_s: float = 0.005) -> int | None:
    """The fewest runnable threads over a few reads, so a process that just woke up does not count; None where
    the OS has no /proc/loadavg."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(running_threads(f.read()))
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(gap_s)
    return min(counts)


def apply(asked: int | None) -> Choice:
    """Choose this process's threads and set torch's intra-op pool to them; call before torch's first parallel
    work (device setup does)."""
    import torch

    choice = choose(asked)
    if choice.threads != torch.get_num_threads():
        torch.set_num_threads(choice.threads)
    running = _running_now() if choice.threads > 1 else None
    if running is not None:
        choice = Choice(choice.threads, choice.cores, choice.jobs, choice.source, busy_note(running, choice))
    return choice


def jobs_at_once(n_jobs: int, cores: int, cores_per_job: int, asked: int | None) -> int:
    """How many of a sweep's `n_jobs` local jobs run at once: as asked, else one per `cores_per_job` cores."""
    at_once = asked if asked is not None else max(1, cores // max(1, cores_per_job))
    return max(1, min(n_jobs, at_once))


def core_slots(cpus: list[int], at_once: int) -> list[list[int]]:
    """`cpus` split into `at_once` sets, one per job running at once: contiguous near-equal runs (neighbours
    share no core), or one core each, round robin, when there are more jobs than cores."""
    if at_once >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(at_once)]
    size, extra = divmod(len(cpus), at_once)
    slots, start = [], 0
    for i in range(at_once):
        end = start + size + (1 if i < extra else 0)
        slots.append(cpus[start:end])
        start = end
    return slots
