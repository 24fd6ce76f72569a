"""The Optuna section of a sweep report: the study's trials, the best one and its command line, the optimisation
history and the parameters' importances, from the study in the sweep dir (nanogpt/sweeps/journal.py)."""

from __future__ import annotations

from typing import Any


def best_trials(study: Any) -> list[Any]:
    """The best trial, or a multi-objective study's Pareto front; [] before any trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]
