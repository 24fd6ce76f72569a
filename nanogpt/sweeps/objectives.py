"""What a study optimises: figures of a finished job, read from what the run wrote (status.json, metrics.jsonl)
as the sweep report reads them, so the study and the report never disagree.

    best_val_loss, best_val_bpb, val_loss, last_train_loss, tokens_per_s (median), wall_s   as report.csv has them
    hellaswag_acc_norm, ...                                                                the last evaluation's
    val_bpb, train_loss, mfu, ... (any metric of metrics.jsonl)                             its last value
    best_<metric>                                                                           its best over the run
"""

from __future__ import annotations

import math

from nanogpt.errors import UserError
from nanogpt.eval import TASKS
from nanogpt.metrics import read_metrics
from nanogpt.sweeps.report import read_job

DIRECTIONS = ("minimize", "maximize")
# What report.read_job derives for a job (a study and its report rank jobs by the same numbers).
JOB_FIGURES = ("best_val_loss", "best_val_bpb", "val_loss", "last_train_loss", "tokens_per_s", "wall_s")
# What a run logs in metrics.jsonl besides its tasks' scores (nanogpt/train.py: evaluations and log steps).
LOGGED = ("val_loss", "train_loss", "val_bpb", "train_bpb", "loss", "lr", "tokens_per_s", "mfu", "eval_tasks_s")


def check(objectives: list[str], directions: list[str]) -> None:
    """Refuse an objective no run logs, a direction that is neither minimize nor maximize, or a count mismatch."""
    for d in directions:
        if d not in DIRECTIONS:
            raise UserError(f"hydra.sweeper.direction={d}: give minimize or maximize (a list: one per objective)")
    if len(directions) != len(objectives):
        raise UserError(
            f"hydra.sweeper.direction has {len(directions)} values for {len(objectives)} objectives "
            f"({', '.join(objectives)}): give one direction per objective, e.g. direction=[minimize,maximize]"
        )
    for name in objectives:
        metric = name.removeprefix("best_")
        task_metric = any(metric.startswith(f"{task}_") for task in TASKS)
        if name not in JOB_FIGURES and metric not in LOGGED and not task_metric:
            raise UserError(
                f"hydra.sweeper.objective={name}: no run logs it; give one of {', '.join(JOB_FIGURES)}, a metric "
                f"of metrics.jsonl ({', '.join(LOGGED)}, <task>_<metric> for train.eval_tasks) or best_<metric>"
            )


def value(job_dir: str, name: str, direction: str) -> float | None:
    """Objective `name` of the finished job in `job_dir`; None where the run never logged it."""
    if name in JOB_FIGURES:
        found = getattr(read_job(job_dir), name)
        return float(found) if found is not None else None
    metric = name.removeprefix("best_") if name.startswith("best_") else name
    # A resumed run appends from its checkpoint: the last record of an iter is current.
    by_iter = {r.get("iter"): r[metric] for r in read_metrics(job_dir) if isinstance(r.get(metric), (int, float))}
    values = [float(v) for _, v in sorted(by_iter.items()) if math.isfinite(v)]
    if not values:
        return None
    if name != metric:
        return min(values) if direction == "minimize" else max(values)
    return values[-1]
