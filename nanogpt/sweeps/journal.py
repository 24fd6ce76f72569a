"""Where a study lives: Optuna's journal file in the sweep dir (or the storage a sweep names), opened, created,
and checked to be the study this sweep continues. Optuna is imported only here and by callers that use it."""

from __future__ import annotations

import os
from typing import Any

from nanogpt.errors import UserError

JOURNAL = "study.journal"  # in the sweep dir: an append-only log, so a kill at any moment loses no finished trial
SWEEP_ATTR = "nanogpt_sweep"  # the study's user attribute recording what it searches (checked on resume)


def storage_spec(sweep_dir: str, storage: str | None) -> str:
    """The storage a sweep uses: a URL as given (sqlite:///study.db), else a journal file path."""
    return storage if storage else os.path.join(sweep_dir, JOURNAL)


def open_storage(spec: str) -> Any:
    """An Optuna storage for a URL, or for a journal file at a path (created, with its folder, if new)."""
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec) if not spec.startswith("redis") else spec
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    os.makedirs(os.path.dirname(os.path.abspath(spec)), exist_ok=True)
    return JournalStorage(JournalFileBackend(spec))


def existing_study(storage: Any, spec: str, name: str, sweep: dict[str, Any]) -> Any | None:
    """The study `name` in `storage` if it is there and searches what `sweep` describes; None if the storage holds
    no study yet; one line if the storage holds another study, or this one with another search."""
    import optuna

    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    if name not in names:
        raise UserError(
            f"the storage {spec} holds study {sorted(names)[0]!r}, not {name!r}: continue it with "
            f"hydra.sweeper.study_name={sorted(names)[0]}, or give another hydra.sweep.dir (or storage) for a new one"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    recorded = study.user_attrs.get(SWEEP_ATTR)
    if recorded is not None and recorded != sweep:
        changed = next(k for k in sweep if recorded.get(k) != sweep[k])
        raise UserError(
            f"study {name!r} in {spec} was started with another {changed} ({recorded.get(changed)}, now "
            f"{sweep[changed]}): rerun the same command to continue it, or give another hydra.sweep.dir"
        )
    return study


def create_study(storage: Any, name: str, directions: list[str], sweep: dict[str, Any]) -> Any:
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    study.set_user_attr(SWEEP_ATTR, sweep)
    return study
