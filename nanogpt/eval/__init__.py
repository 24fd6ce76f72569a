"""Downstream evaluation: how good a model is at tasks, beside its loss.

Our own tasks live in this registry, name -> "module:function", so that `train.eval_tasks` (scored during training)
and `eval.py tasks=[...]` take the same names; the modules import torch only when a task runs. Any task of
lm-evaluation-harness runs through `harness.py` instead (`eval.py harness=[...]`).

A task module has two functions: `load(settings, data_dir, limit, dist)` reads (or downloads) its examples once, so a
missing file fails a run before it trains; `score(scorer, examples)` scores them with a `Scorer`
(nanogpt/eval/scoring.py) and returns a `TaskResult`. In a distributed run every process calls both: each scores
its share and all get the reduced result.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from nanogpt.errors import UserError

TASKS: dict[str, str] = {
    "hellaswag": "nanogpt.eval.hellaswag",
    "chat_exact": "nanogpt.eval.chat_exact",
}


@dataclass
class TaskResult:
    metrics: dict[str, float]  # logged as <task>_<metric>: hellaswag_acc, hellaswag_acc_norm
    version: str  # changes whenever the data or the scoring changes what the numbers mean
    examples: int  # examples scored
    details: dict[str, Any] = field(default_factory=dict)  # counts worth knowing: crops, dropped characters, the file


def check_task_names(names: list[str], key: str) -> None:
    """Refuse a task we do not have, naming the closest one (harness tasks go through eval.py harness=[...])."""
    for name in names:
        if name not in TASKS:
            close = difflib.get_close_matches(name, TASKS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UserError(
                f"{key}: unknown task {name!r}: {hint}our tasks are {', '.join(sorted(TASKS))}; for "
                "lm-evaluation-harness tasks use python eval.py harness=[<task>]"
            )


def task_module(name: str) -> ModuleType:
    """The module of one of our tasks: its `load` and `score`."""
    check_task_names([name], "tasks")
    return importlib.import_module(TASKS[name])
