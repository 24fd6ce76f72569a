"""Summarise a sweep: one row per job (its overrides, status, losses, downstream accuracy when the jobs scored
tasks in training, speed, wall time) and its val loss curves, with the downstream metric's curves beside them.

    python -m nanogpt.sweeps multirun/<date>/<time>

writes report.md, report.csv and val_loss.png into that dir; when the jobs carry FLOPs budgets (train.flops_budget),
report.md adds the scaling analysis (nanogpt/sweeps/scaling_report.py: approaches 2 and 3 with bootstrap intervals)
with isoflop.png and frontier.png. Hydra's multirun
layout is the input: each job dir holds `.hydra/overrides.yaml` and `config.yaml`, `status.json` (nanogpt/rundir.py),
`metrics.jsonl` (nanogpt/metrics.py) and `plan.json` (nanogpt/sweeps/budgets.py).
nanogpt/cli/sweep_callback.py, registered under `hydra.callbacks` in conf/train.yaml, writes it when a sweep ends.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from nanogpt.atomic import atomic_write_text
from nanogpt.errors import UserError, exit_on_user_error
from nanogpt.metrics import read_metrics

if TYPE_CHECKING:
    from nanogpt.sweeps import isoflop

log = logging.getLogger("nanogpt")

# best_val_bpb: the best val loss in bits per byte of text, the figure that compares runs with different tokenizers
# (nanogpt/bits_per_byte.py); empty for data sets prepared before bytes per token were recorded.
COLUMNS = (
    "job",
    "overrides",
    "status",
    "best_val_loss",
    "best_val_bpb",
    "last_train_loss",
    "tokens_per_s",
    "wall_s",
    "iter",
)


@dataclass
class Job:
    """What one job dir of a sweep says about its run."""

    num: str
    path: str
    overrides: list[str]
    status: str
    error: str | None = None
    iter: int | None = None
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    last_train_loss: float | None = None
    tokens_per_s: float | None = None
    wall_s: float | None = None
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    val_loss: float | None = None  # at the end of training
    flops_budget: float | None = None  # the job's train.flops_budget
    depth: int | None = None  # and its model.depth
    seed: int | None = None  # and its seed: the scaling report averages a (budget, size) over seeds
    plan: dict[str, Any] = field(default_factory=dict)  # plan.json (nanogpt/sweeps/budgets.py): N, D, C
    # Downstream tasks scored during training (train.eval_tasks): metric (hellaswag_acc, ...) -> [(iter, value)].
    task_curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def task_metric(self, name: str) -> float | None:
        """The metric's last value: the run's final evaluation."""
        curve = self.task_curves.get(name)
        return curve[-1][1] if curve else None


# What an evaluation record holds besides the downstream tasks' metrics.
_EVAL_KEYS = {"iter", "train_loss", "val_loss", "train_bpb", "val_bpb", "lr", "eval_tasks_s"}


def read_job(path: str) -> Job:
    """A job dir's overrides, final status and metrics; a job that never wrote them is reported as such."""
    overrides_file = os.path.join(path, ".hydra", "overrides.yaml")
    overrides = [str(o) for o in _read_yaml(overrides_file) or []]
    status = _read_json(os.path.join(path, "status.json"))

    # A requeued or resumed run appends again from its checkpoint: the last record of an iter wins.
    evals: dict[int, float] = {}
    tasks: dict[str, dict[int, float]] = {}
    bpb: dict[int, float] = {}
    train: dict[int, dict[str, Any]] = {}
    for record in read_metrics(path):
        if record.get("val_loss") is not None:
            evals[record["iter"]] = record["val_loss"]
            for key in record.keys() - _EVAL_KEYS:
                if isinstance(record[key], (int, float)):
                    tasks.setdefault(key, {})[record["iter"]] = record[key]
        if record.get("val_bpb") is not None:
            bpb[record["iter"]] = record["val_bpb"]
        if "loss" in record:
            train[record["iter"]] = record
    speeds = [r["tokens_per_s"] for r in train.values() if r.get("tokens_per_s")]
    config_file = os.path.join(path, ".hydra", "config.yaml")
    config = _read_yaml(config_file) or {}
    last_train = train[max(train)].get("loss") if train else None
    return Job(
        num=os.path.basename(path),
        path=path,
        overrides=overrides,
        status=status.get("status", "unknown"),
        error=status.get("error"),
        iter=status.get("iter", max([*train, *evals], default=None)),
        best_val_loss=status.get("best_val_loss", min(evals.values(), default=None)),
        best_val_bpb=min(bpb.values(), default=None),
        last_train_loss=status.get("last_train_loss", last_train),
        tokens_per_s=round(statistics.median(speeds), 1) if speeds else None,
        wall_s=status.get("wall_s"),
        val_curve=sorted(evals.items()),
        task_curves={k: sorted(v.items()) for k, v in sorted(tasks.items())},
        val_loss=status.get("val_loss", evals[max(evals)] if evals else None),
        flops_budget=_number(config.get("train", {}).get("flops_budget"), float),
        depth=_number(config.get("model", {}).get("depth"), int),
        seed=_number(config.get("seed"), int),
        plan=_read_json(os.path.join(path, "plan.json")),
    )


def _read_yaml(path: str) -> Any:
    """A job's saved Hydra file (written by OmegaConf: plain YAML), or None where the job never wrote it."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _number(value: Any, kind: type) -> Any:
    """A saved number; YAML 1.1 reads an exponent without a dot (3e10) as text."""
    return None if value is None else kind(float(value))


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def find_jobs(sweep_dir: str) -> list[Job]:
    """The job dirs of a sweep (`<sweep dir>/<job num>/`), in job order."""
    if not os.path.isdir(sweep_dir):
        raise UserError(f"{sweep_dir} is not a directory: pass a sweep dir, multirun/<date>/<time>")
    nums = [n for n in os.listdir(sweep_dir) if n.isdigit() and os.path.isdir(os.path.join(sweep_dir, n))]
    if not nums:
        raise UserError(f"{sweep_dir} holds no job dirs (0/, 1/, ...): pass a sweep dir, multirun/<date>/<time>")
    return [read_job(os.path.join(sweep_dir, n)) for n in sorted(nums, key=int)]


def _varying(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """The overrides shared by every job, and each job's others (what the sweep varied)."""
    common = [o for o in jobs[0].overrides if all(o in j.overrides for j in jobs)] if len(jobs) > 1 else []
    return common, [[o for o in j.overrides if o not in common] for j in jobs]


def _fmt(column: str, x: Any) -> str:
    if x is None:
        return ""
    if column == "tokens_per_s":
        return f"{x:,.0f}"
    if column == "wall_s":
        return f"{x:.1f}"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def write_report(sweep_dir: str) -> list[str]:
    """Write report.md, report.csv and val_loss.png (when matplotlib is installed); returns their paths."""
    jobs = find_jobs(sweep_dir)
    common, varying = _varying(jobs)
    task_columns = sorted({k for j in jobs for k in j.task_curves})  # hellaswag_acc, ... when a job has them
    columns = (*COLUMNS[:5], *task_columns, *COLUMNS[5:])  # the tasks after the val loss and its bits per byte
    # The columns after job and overrides are the Job fields of the same names, then the tasks' final scores.
    rows = [
        {
            "job": j.num,
            "overrides": " ".join(v),
            **{c: getattr(j, c) for c in COLUMNS[2:]},
            **{k: j.task_metric(k) for k in task_columns},
        }
        for j, v in zip(jobs, varying, strict=True)
    ]

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, "all_overrides", "error"], lineterminator="\n")
    writer.writeheader()
    for row, j in zip(rows, jobs, strict=True):
        writer.writerow({**row, "all_overrides": " ".join(j.overrides), "error": j.error or ""})
    written = [_write(os.path.join(sweep_dir, "report.csv"), buf.getvalue())]

    lines = [f"# Sweep {os.path.abspath(sweep_dir)}", ""]
    if common:
        lines += [f"Every job: `{' '.join(common)}`", ""]
    done = [j for j in jobs if j.status == "completed"]
    lines += [f"{len(done)} of {len(jobs)} jobs completed."]
    ranked = [j for j in jobs if j.best_val_loss is not None]
    if ranked:
        best = min(ranked, key=lambda j: j.best_val_loss)
        what = " ".join(varying[jobs.index(best)])
        lines += [f"Best val loss: {best.best_val_loss:.4f}, job {best.num}" + (f" (`{what}`)." if what else ".")]
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"`{row[c]}`" if c == "overrides" and row[c] else _fmt(c, row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [j for j in jobs if j.error]
    if failed:
        lines += ["", "Errors:", ""] + [f"- job {j.num} ({j.status}): {j.error}" for j in failed]
    plot = _plot(sweep_dir, jobs, varying)
    if plot:
        lines += ["", "![val loss](val_loss.png)"]
        written.append(plot)
    if any(j.flops_budget is not None for j in jobs):
        # Imported here: every run.py process builds the sweep callback; only budgeted sweeps need numpy's fits.
        from nanogpt.sweeps import scaling_report

        scaling_lines, plots = scaling_report.section(
            [_point(j) for j in jobs if j.flops_budget is not None], sweep_dir
        )
        lines += scaling_lines
        written += plots
    from nanogpt.sweeps import study  # the Optuna study's section, when the sweep was one (optuna imported only then)

    study_lines, study_files = study.report(sweep_dir)
    lines, written = lines + study_lines, written + study_files
    written.insert(0, _write(os.path.join(sweep_dir, "report.md"), "\n".join(lines) + "\n"))
    return written


def _point(j: Job) -> isoflop.Point:
    """A job as the IsoFLOP analysis sees it: its budget, N, D and C from plan.json, its final val loss."""
    from nanogpt.sweeps import isoflop

    return isoflop.Point(
        job=j.num,
        budget=float(j.flops_budget or 0),
        status=j.status,
        params=j.plan.get("params"),
        tokens=j.plan.get("tokens"),
        flops=j.plan.get("flops"),
        val_loss=j.val_loss,
        tokens_per_s=j.tokens_per_s,
        depth=j.depth,
        seed=j.seed,
    )


def _write(path: str, text: str) -> str:
    atomic_write_text(path, text)
    return path


def _plot(sweep_dir: str, jobs: list[Job], varying: list[list[str]]) -> str | None:
    """val_loss.png: every job's val loss against iterations (and a downstream metric beside it, when the jobs scored
    one); None without matplotlib or without evals."""
    if not any(j.val_curve for j in jobs):
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on clusters
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no val_loss.png (pip install matplotlib)")
        return None
    task = _plotted_task_metric(jobs)
    fig, axes = plt.subplots(1, 2 if task else 1, figsize=(14 if task else 8, 5), squeeze=False)
    panels = [("val_curve", "val loss")] + ([(task, task.replace("_", " "))] if task else [])
    for ax, (what, label) in zip(axes[0], panels, strict=True):
        for j, v in zip(jobs, varying, strict=True):
            curve = j.val_curve if what == "val_curve" else j.task_curves.get(what, [])
            if curve:
                iters, values = zip(*curve, strict=True)
                ax.plot(iters, values, marker="o", markersize=3, label=f"{j.num}: {' '.join(v)}"[:80])
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_title("/".join(os.path.abspath(sweep_dir).split(os.sep)[-2:]))
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    path = os.path.join(sweep_dir, "val_loss.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plotted_task_metric(jobs: list[Job]) -> str | None:
    """The downstream metric drawn beside the val loss: the first acc_norm (HellaSwag's headline), else the first."""
    names = sorted({k for j in jobs for k in j.task_curves})
    return next((n for n in names if n.endswith("acc_norm")), names[0] if names else None)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanogpt.sweeps", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a sweep's dir, multirun/<date>/<time>")
    args = parser.parse_args(argv)
    paths = write_report(args.sweep_dir)
    with open(paths[0]) as f:
        print(f.read(), end="")
    print("wrote " + ", ".join(paths))
