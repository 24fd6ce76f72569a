"""The `hydra/launcher=nanogpt_local` config and its launcher: hydra-submitit-launcher's local launcher, but running
only as many jobs at once as the cores allow (a new one as each finishes) and pinning each to its own cores, so
that parallel jobs share the machine instead of fighting over it (nanogpt/threads.py gives each its threads)."""

# No `from __future__ import annotations`: OmegaConf reads the dataclass's annotations as real types.
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

from nanogpt import threads

log = logging.getLogger(__name__)
POLL_S = 0.2  # how often the launcher looks for a finished job to start the next one


@dataclass
class NanogptLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.nanogpt_local_launcher.local_launcher.NanogptLocalLauncher"
    # jobs running at once; null: one per cpus_per_task x tasks_per_node of the cores this process may use
    array_parallelism: int | None = None
    pin_cpus: bool = True  # each job running at once on its own cores (Linux); false: all jobs on all cores


ConfigStore.instance().store(group="hydra/launcher", name="nanogpt_local", node=NanogptLocalConf, provider="nanogpt")


@dataclass(frozen=True)
class Placement:
    """Where a job runs: its cores (None: unpinned), and the jobs and cores it shares the machine with."""

    cpus: list[int] | None
    jobs: int
    cores: int


class NanogptLocalLauncher(LocalLauncher):
    def __init__(self, **params: Any) -> None:
        self.array_parallelism = params.pop("array_parallelism", None)
        self.pin_cpus = params.pop("pin_cpus", True)
        super().__init__(**params)

    def __call__(  # type: ignore[override]  # runs in the job's process
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
        placement: Placement | None = None,
    ) -> JobReturn:
        if placement is not None:
            os.environ[threads.PARALLEL_JOBS] = str(placement.jobs)
            os.environ[threads.PARALLEL_CORES] = str(placement.cores)
            if placement.cpus is not None:
                os.sched_setaffinity(0, placement.cpus)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        executor = submitit.AutoExecutor(cluster="local", folder=self.params["submitit_folder"])
        executor.update_parameters(**{k: v for k, v in self.params.items() if k != "submitit_folder"})
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        slots = self._slots(len(job_overrides))
        sweep_dir = self.config.hydra.sweep.dir
        log.info("local launcher: %d jobs, %d at once, in %s", len(job_overrides), len(slots), sweep_dir)
        pending = deque(enumerate(job_overrides))
        free = deque(slots)
        running: dict[int, Any] = {}
        results: list[Any] = [None] * len(job_overrides)
        while pending or running:
            while pending and free:
                i, overrides = pending.popleft()
                idx = initial_job_idx + i
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                args = (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
                slot = free.popleft()
                running[i] = (executor.submit(self, *args, slot), slot)
            time.sleep(POLL_S)
            for i, (job, slot) in list(running.items()):
                if job.done():
                    results[i] = job.results()[0]
                    free.append(slot)
                    del running[i]
        return results

    def _slots(self, n_jobs: int) -> list[Placement]:
        """One placement per job running at once: its own cores where the platform can pin."""
        cores = threads.allowed_cores()
        per_job = (self.params.get("cpus_per_task") or 1) * self.params.get("tasks_per_node", 1)
        at_once = threads.jobs_at_once(n_jobs, cores, per_job, self.array_parallelism)
        if not (self.pin_cpus and hasattr(os, "sched_setaffinity")):
            return [Placement(None, at_once, cores) for _ in range(at_once)]
        cpus = sorted(os.sched_getaffinity(0))
        return [Placement(s, at_once, cores) for s in threads.core_slots(cpus, at_once)]
