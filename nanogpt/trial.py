"""A run that is a trial of an Optuna study (the sweeper wrote trial.json into its dir): its evaluations go to the
study, and the study's pruner may stop it early. Runs without trial.json pay one stat per evaluation.

The training loop calls `report(run_dir, iter, val_loss, dist)` after each evaluation; `Pruned` ends the run,
recorded as `pruned` in status.json (nanogpt/cli/run.py)."""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

from nanogpt.ranks import Dist

log = logging.getLogger("nanogpt")

TRIAL = "trial.json"  # {storage, study, trial (its number), pruner, pruner_startup_trials}
PRUNERS = ("none", "median", "successive_halving", "hyperband")


class Pruned(Exception):
    """The study's pruner stopped this run: its val loss at `iter` was not promising."""

    def __init__(self, iter: int, val_loss: float):
        super().__init__(f"pruned at iter {iter} (val loss {val_loss:.4f})")
        self.iter, self.val_loss = iter, val_loss


def report(run_dir: str, iter: int, val_loss: float, dist: Dist) -> None:
    """Tell the run's trial its val loss at `iter`; raise Pruned on every rank when the pruner says stop."""
    path = os.path.join(run_dir, TRIAL)
    # Iter 0 is the untrained model: its loss says nothing about the hyperparameters a pruner should judge.
    if iter == 0 or not os.path.isfile(path):
        return
    stop = False
    if dist.is_main:
        trial = _open_trial(path)
        if trial is not None:
            trial.report(val_loss, step=iter)
            stop = trial.should_prune()
    if dist.enabled:
        from nanogpt import distributed

        stop = distributed.broadcast(stop, dist)
    if stop:
        log.info("iter %d: the study's pruner stops this trial (val loss %.4f)", iter, val_loss)
        raise Pruned(iter, val_loss)


@functools.lru_cache(maxsize=4)
def _open_trial(path: str) -> Any:
    """The optuna Trial that trial.json names, with its study's pruner; None when the sweep prunes nothing."""
    with open(path) as f:
        spec = json.load(f)
    if spec["pruner"] == "none":
        return None
    import optuna

    from nanogpt.sweeps.journal import open_storage

    study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]), pruner=_pruner(spec))
    trial_id = study.trials[spec["trial"]]._trial_id
    return optuna.trial.Trial(study, trial_id)


def _pruner(spec: dict[str, Any]) -> Any:
    import optuna.pruners as pruners

    if spec["pruner"] == "median":
        return pruners.MedianPruner(n_startup_trials=spec["pruner_startup_trials"])
    if spec["pruner"] == "successive_halving":
        return pruners.SuccessiveHalvingPruner()
    return pruners.HyperbandPruner()
