"""The `hydra/sweeper=optuna` config (Hydra's ConfigStore) and the Sweeper plugin Hydra instantiates from it.

Our own plugin over Optuna's ask-and-tell API rather than the published hydra-optuna-sweeper: that one is pinned to
optuna<3. Its override syntax (`tag(log, interval(1e-4, 1e-2))`, `choice(...)`, `range(...)`) and keys carry over;
`objective`, `pruner` and `pruner_startup_trials` are ours."""

# No `from __future__ import annotations`: Hydra runs this module without putting it in sys.modules, and the
# dataclasses below (OmegaConf's schema) need their annotations as real types.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class SamplerConf:
    name: str = "tpe"  # tpe | random | grid (choice/range parameters only) | cmaes
    seed: int = 1337  # trial n draws with seed + n, so a resumed study samples what an unbroken one would
    n_startup_trials: int = 10  # tpe, cmaes: trials sampled at random before the model-based ones


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.nanogpt_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    sampler: SamplerConf = field(default_factory=SamplerConf)
    # minimize | maximize, or a list of them, one per objective
    direction: Any = "minimize"
    # a job's figure to optimise: best_val_loss, any metric of metrics.jsonl (its last value; best_<metric> for its
    # best), or a list of them for a multi-objective study
    objective: Any = "best_val_loss"
    study_name: str | None = None  # default: the runs' `name`
    storage: str | None = None  # default: <sweep dir>/study.journal; a journal file path or an Optuna storage URL
    n_trials: int = 20  # trials in the study, counting those a resumed sweep already ran
    n_jobs: int = 1  # trials launched at once (hydra/launcher=local or slurm runs them in parallel)
    params: dict[str, str] | None = None  # key -> its sweep, as typed on the command line: interval(1e-4, 1e-2)
    pruner: str = "none"  # median | successive_halving | hyperband | none: stop runs early from their val loss
    pruner_startup_trials: int = 5  # median: trials that finish before it prunes any


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="nanogpt")


class OptunaSweeper(Sweeper):
    """Ask Optuna for trials, launch them as Hydra jobs, tell it each job's objective (nanogpt/cli/optuna_sweep.py)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.search: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from nanogpt.cli.optuna_sweep import OptunaSearch

        self.search = OptunaSearch(self.settings, hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.run(arguments)
