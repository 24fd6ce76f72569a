"""The Optuna section of a sweep report, when the sweep was a study (its job dirs hold trial.json): the trials
(parameters, objectives, state, duration; also in trials.csv), the best trial and the command that reruns it, the
optimisation history (study_history.png) and the parameters' importances (Optuna's fANOVA)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
from typing import Any

from nanogpt.atomic import atomic_write_text
from nanogpt.trial import TRIAL

log = logging.getLogger("nanogpt")


def best_trials(study: Any) -> list[Any]:
    """The best trial, or a multi-objective study's Pareto front; [] before any trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def report(sweep_dir: str) -> tuple[list[str], list[str]]:
    """report.md's lines about the study and the files written beside it; nothing if the sweep was no study."""
    study = _load(sweep_dir)
    if study is None:
        return [], []
    from nanogpt.sweeps.journal import SWEEP_ATTR

    objectives = study.user_attrs.get(SWEEP_ATTR, {}).get("objective") or [f"value {i}" for i in study.directions]
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
    goals = ", ".join(f"{d.name.lower()} {o}" for o, d in zip(objectives, study.directions, strict=True))
    lines = ["", f"## Optuna study `{study.study_name}`", "", f"{len(trials)} trials ({counts}); {goals}.", ""]
    label = "Best" if len(study.directions) == 1 else "On the Pareto front"
    for best in best_trials(study):
        values = ", ".join(_shown(o, v) for o, v in zip(objectives, best.values, strict=True))
        lines += [
            f"{label}: trial {best.number} ({values}); rerun it with",
            "",
            f"    {_command(sweep_dir, best.number)}",
            "",
        ]
    params = sorted({k for t in trials for k in t.params})
    rows = [_row(t, params, objectives) for t in trials]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] if rows else []
    lines += ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in rows]
    written = [_write_csv(os.path.join(sweep_dir, "trials.csv"), rows)] if rows else []
    lines += _importances(study, objectives)
    plot = _plot_history(study, objectives, os.path.join(sweep_dir, "study_history.png"))
    if plot:
        lines += ["", "![optimisation history](study_history.png)"]
        written.append(plot)
    return lines, written


def _load(sweep_dir: str) -> Any | None:
    """The study the sweep's trial.json files name (the storage may live outside the sweep dir)."""
    jobs = [n for n in os.listdir(sweep_dir) if n.isdigit() and os.path.isfile(os.path.join(sweep_dir, n, TRIAL))]
    if not jobs:
        return None
    with open(os.path.join(sweep_dir, min(jobs, key=int), TRIAL)) as f:
        spec = json.load(f)
    import optuna

    from nanogpt.sweeps.journal import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]))


def _row(trial: Any, params: list[str], objectives: list[str]) -> dict[str, Any]:
    values = trial.values or [None] * len(objectives)
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        **{o: v for o, v in zip(objectives, values, strict=True)},
        **{p: trial.params.get(p) for p in params},
        "duration_s": round(duration, 1) if duration is not None else None,
    }


def _shown(name: str, value: float) -> str:
    return f"{name} {value:.4f}" if abs(value) < 1000 else f"{name} {value:,.0f}"  # a loss, or tokens/s


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _command(sweep_dir: str, number: int) -> str:
    """`python run.py <the trial's overrides>`: the job's own record of what it was given."""
    import yaml

    path = os.path.join(sweep_dir, str(number), ".hydra", "overrides.yaml")
    overrides = yaml.safe_load(open(path)) if os.path.isfile(path) else []
    return " ".join(["python run.py", *(shlex.quote(str(o)) for o in overrides or [])])


def _write_csv(path: str, rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def _importances(study: Any, objectives: list[str]) -> list[str]:
    """Each parameter's share of the objective's variance over the completed trials (fANOVA)."""
    import optuna

    lines = []
    for i, name in enumerate(objectives):
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # seeded: the same report every time
            found = optuna.importance.get_param_importances(
                study, evaluator=evaluator, target=lambda t, i=i: t.values[i]
            )
        except (RuntimeError, ValueError) as e:  # too few completed trials, or a parameter not in all of them
            lines += ["", f"No parameter importances for {name} yet ({e})."]
            continue
        shown = ", ".join(f"{p} {v:.2f}" for p, v in found.items())
        lines += ["", f"Parameter importances for {name} (fANOVA over the completed trials): {shown}."]
    return lines


def _plot_history(study: Any, objectives: list[str], path: str) -> str | None:
    """Each completed trial's objectives by trial number, with the best so far; None without matplotlib."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no study_history.png (pip install matplotlib)")
        return None
    fig, axes = plt.subplots(1, len(objectives), figsize=(7 * len(objectives), 4.5), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], objectives, strict=True)):
        numbers, values = [t.number for t in done], [t.values[i] for t in done]
        pick = min if study.directions[i].name == "MINIMIZE" else max
        ax.plot(numbers, values, "o", label="trial")
        ax.step(numbers, [pick(values[: k + 1]) for k in range(len(values))], where="post", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    axes[0][0].set_title(f"study {study.study_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
