"""The Optuna sweeper's work (the plugin is hydra_plugins/nanogpt_optuna_sweeper): check the search, open the study
in the sweep dir, finish the trials a killed sweep left in flight, then ask Optuna for `n_jobs` trials at a time,
launch them as Hydra jobs and tell it each job's objective as its run dir records it.

Trial n is job n (`<sweep dir>/<n>/`), so a rerun with `hydra.sweep.dir=<that dir>` finds every trial's run: a
finished one is told from its status.json, an interrupted one continues with `resume=<its dir>` (exact resume).
Each job dir gets trial.json first, through which the run reports its evaluations to the study (nanogpt/trial.py).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from hydra.core.plugins import Plugins
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from nanogpt.atomic import atomic_write_text
from nanogpt.cli import search_space
from nanogpt.errors import UserError
from nanogpt.rundir import STATUS, is_run_dir
from nanogpt.sweeps import journal, objectives
from nanogpt.trial import PRUNERS, TRIAL

log = logging.getLogger("nanogpt")

SAMPLERS = ("tpe", "random", "grid", "cmaes")


class OptunaSearch:
    def __init__(self, settings: dict[str, Any], hydra_context: HydraContext, task: TaskFunction, config: DictConfig):
        plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in settings.items()}
        self.s = plain
        self.sampler: dict[str, Any] = plain["sampler"]
        self.objectives = _as_list(plain["objective"])
        self.directions = _as_list(plain["direction"])
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task, config=config
        )
        self.sweep_dir = str(config.hydra.sweep.dir)
        self.name = self.s["study_name"] or str(config.get("name") or "study")
        self.storage = journal.storage_spec(self.sweep_dir, self.s["storage"])

    def run(self, arguments: list[str]) -> list[Any]:
        space = self._checked_space(arguments)  # every refusal comes before the study is touched
        study = self._study(space)
        os.makedirs(self.sweep_dir, exist_ok=True)
        OmegaConf.save(self.config, os.path.join(self.sweep_dir, "multirun.yaml"))
        returns = self._continue_in_flight(study, space)
        while (left := self.n_trials - len(study.trials)) > 0:
            batch = [self._ask(study, space) for _ in range(min(self.s["n_jobs"], left))]
            returns.append(self._launch(study, [(t.number, space.overrides(t.params)) for t in batch]))
        self._log_best(study)
        return returns

    # ---- refusals ----

    def _checked_space(self, arguments: list[str]) -> search_space.SearchSpace:
        s = self.s
        params = [f"{k}={v}" for k, v in (s["params"] or {}).items()]
        space = search_space.parse(params + list(arguments))
        objectives.check(self.objectives, self.directions)
        if self.sampler["name"] not in SAMPLERS:
            raise UserError(f"hydra.sweeper.sampler.name={self.sampler['name']}: choose one of {', '.join(SAMPLERS)}")
        if s["pruner"] not in PRUNERS:
            raise UserError(f"hydra.sweeper.pruner={s['pruner']}: choose one of {', '.join(PRUNERS)}")
        if s["pruner"] != "none" and (len(self.objectives) > 1 or self.directions != ["minimize"]):
            raise UserError(
                f"hydra.sweeper.pruner={s['pruner']} compares the runs' val losses, so it needs one objective to "
                f"minimize (not {', '.join(self.objectives)}): set hydra.sweeper.pruner=none"
            )
        if s["n_trials"] < 1 or s["n_jobs"] < 1:
            raise UserError(f"hydra.sweeper.n_trials={s['n_trials']}, n_jobs={s['n_jobs']}: give at least 1 each")
        self.n_trials = s["n_trials"]
        if self.sampler["name"] == "grid":
            size = _grid_size(space.grid())
            if size < self.n_trials:
                log.warning("the grid has %d points: running %d trials, not n_trials=%d", size, size, self.n_trials)
                self.n_trials = size
        if self.sampler["name"] == "cmaes":
            try:
                import cmaes  # noqa: F401  Optuna's CMA-ES sampler runs on it
            except ImportError:
                raise UserError("hydra.sweeper.sampler.name=cmaes needs the cmaes package: pip install cmaes") from None
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False).get("subdir")
        if subdir != "${hydra.job.num}":
            raise UserError(f"hydra.sweep.subdir={subdir}: give ${{hydra.job.num}} (trial n is job n)")
        # Compose one trial's config: an unknown key or a value of the wrong type fails here, not in every job.
        first = {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in space.distributions.items()}
        self.hydra_context.config_loader.load_sweep_config(self.config, space.overrides(first))
        return space

    def _study(self, space: search_space.SearchSpace) -> Any:
        sweep = {"params": space.describe(), "fixed": space.fixed, "objective": self.objectives}
        sweep["direction"] = self.directions
        storage = journal.open_storage(self.storage)
        study = journal.existing_study(storage, self.storage, self.name, sweep)
        if study is None:
            return journal.create_study(storage, self.name, self.directions, sweep)
        done = sum(t.state.is_finished() for t in study.trials)
        log.info("continuing study %r in %s: %d trials finished", self.name, self.storage, done)
        return study

    # ---- ask, launch, tell ----

    def _ask(self, study: Any, space: search_space.SearchSpace) -> Any:
        # A fresh sampler per trial, seeded by the trial's number: what trial n draws depends only on the seed and
        # the finished trials, so a study resumed after a kill samples what an unbroken one would have.
        study.sampler = self._make_sampler(len(study.trials), space)
        return study.ask(space.distributions)

    def _make_sampler(self, number: int, space: search_space.SearchSpace) -> Any:
        import optuna.samplers as samplers

        name, seed, startup = self.sampler["name"], self.sampler["seed"] + number, self.sampler["n_startup_trials"]
        if name == "tpe":
            return samplers.TPESampler(seed=seed, n_startup_trials=startup)
        if name == "random":
            return samplers.RandomSampler(seed=seed)
        if name == "grid":
            # The seed shuffles the grid, and a grid id means a point of that shuffle: one seed for every trial.
            return samplers.GridSampler(space.grid(), seed=self.sampler["seed"])
        return samplers.CmaEsSampler(seed=seed, n_startup_trials=startup)

    def _continue_in_flight(self, study: Any, space: search_space.SearchSpace) -> list[Any]:
        """The trials a killed sweep left running: told from their run dir if they finished, else relaunched
        (resumed from their last checkpoint when they had one)."""
        from optuna.trial import TrialState

        jobs = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            job = self._job_dir(trial.number)
            if _read_status(job).get("status") in ("completed", "pruned", "failed"):
                self._tell(study, trial.number)
            elif is_run_dir(job):
                log.info("trial %d was interrupted: resuming %s", trial.number, job)
                jobs.append((trial.number, [f"resume={os.path.abspath(job)}"]))
            else:
                jobs.append((trial.number, space.overrides(trial.params)))
        # Hydra numbers a batch's jobs from its first: one batch per run of consecutive trial numbers.
        batches: list[list[tuple[int, list[str]]]] = []
        for number, overrides in jobs:
            if batches and batches[-1][-1][0] == number - 1 and len(batches[-1]) < self.s["n_jobs"]:
                batches[-1].append((number, overrides))
            else:
                batches.append([(number, overrides)])
        return [self._launch(study, batch) for batch in batches]

    def _launch(self, study: Any, batch: list[tuple[int, list[str]]]) -> Any:
        for number, _ in batch:
            self._write_trial_file(number)
        results = self.launcher.launch([overrides for _, overrides in batch], initial_job_idx=batch[0][0])
        for number, _ in batch:
            self._tell(study, number)
        return results

    def _tell(self, study: Any, number: int) -> None:
        import optuna.samplers as samplers
        from optuna.trial import TrialState

        job = self._job_dir(number)
        status = _read_status(job).get("status")
        # Telling is bookkeeping: samplers draw at ask time, and the grid sampler's after_trial would call
        # study.stop() once the grid is done, which only study.optimize allows.
        study.sampler = samplers.RandomSampler()
        if status == "completed":
            values = [objectives.value(job, n, d) for n, d in zip(self.objectives, self.directions, strict=True)]
            if None in values:
                missing = self.objectives[values.index(None)]
                log.warning("trial %d: its run logged no %s: recorded as failed", number, missing)
                study.tell(number, state=TrialState.FAIL)
                return
            study.tell(number, values)
            shown = ", ".join(f"{n}={v:.4g}" for n, v in zip(self.objectives, values, strict=True))
            log.info("trial %d: %s", number, shown)
        elif status == "pruned":
            study.tell(number, state=TrialState.PRUNED)
            log.info("trial %d: pruned", number)
        elif status in (None, "running", "interrupted"):  # stopped, not finished: the next rerun resumes it
            log.warning("trial %d did not finish: rerun with hydra.sweep.dir=%s to resume it", number, self.sweep_dir)
        else:
            study.tell(number, state=TrialState.FAIL)
            log.info("trial %d: failed (%s)", number, _read_status(job).get("error"))

    def _job_dir(self, number: int) -> str:
        return os.path.join(self.sweep_dir, str(number))

    def _write_trial_file(self, number: int) -> None:
        """trial.json in the job's dir: how its run finds the study to report its evaluations to."""
        s = self.s
        trial = {"storage": os.path.abspath(self.storage) if "://" not in self.storage else self.storage}
        trial.update(study=self.name, trial=number, pruner=s["pruner"])
        trial["pruner_startup_trials"] = s["pruner_startup_trials"]
        os.makedirs(self._job_dir(number), exist_ok=True)
        atomic_write_text(os.path.join(self._job_dir(number), TRIAL), json.dumps(trial, indent=1) + "\n")

    def _log_best(self, study: Any) -> None:
        from nanogpt.sweeps.study import best_trials

        for trial in best_trials(study):
            log.info("best trial %d: %s", trial.number, ", ".join(f"{v:.4g}" for v in trial.values))


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _grid_size(grid: dict[str, list[Any]]) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


def _read_status(job_dir: str) -> dict[str, Any]:
    path = os.path.join(job_dir, STATUS)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
