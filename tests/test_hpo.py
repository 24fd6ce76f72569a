"""Hyperparameter search through `python run.py -m hydra/sweeper=optuna`: the override syntax as Optuna distributions,
a real tiny study end to end (objectives checked against the runs' own metrics.jsonl), bad input as one line with the
study untouched, a sweep killed with kill -9 mid-trial and rerun ending as an unbroken one, and pruning."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import optuna
import pytest
import yaml

from nanogpt.cli.search_space import parse
from nanogpt.errors import UserError
from tests.helpers import TINY, metrics, one_line_error, popen_entry, read_csv, run_entry, status, wait_for

# Three trials of 120 steps (a second or two each), two of them random, the third TPE's, over three parameters.
SEARCH = [
    "hydra/sweeper=optuna",
    "hydra.sweeper.n_trials=3",
    "hydra.sweeper.sampler.n_startup_trials=2",
    "optim.lr=tag(log, interval(1e-4, 3e-2))",
    "model.n_layer=choice(1,2)",
    "optim.warmup_iters=range(0,20,10)",
    "train.max_iters=120",
    "train.eval_interval=40",
]


def sweep_args(data: Path, sweep: Path, *extra: str) -> list[str]:
    return ["-m", *TINY, f"paths.data_dir={data}", *SEARCH, f"hydra.sweep.dir={sweep}", *extra]


def load(sweep: Path, name: str = "default") -> optuna.Study:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(sweep / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def outcome(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state.name, t.params, t.values) for t in study.trials]


@pytest.fixture(scope="module")
def study_sweep(tmp_path_factory, char_data) -> Path:
    """One unbroken 3-trial study, shared by the tests that read it or must leave it untouched."""
    tmp = tmp_path_factory.mktemp("hpo")
    run_entry("run.py", *sweep_args(char_data, tmp / "sweep"), cwd=tmp)
    return tmp / "sweep"


def test_the_override_syntax_becomes_optuna_distributions():
    space = parse(
        [
            "optim.lr=tag(log, interval(1e-4, 1e-2))",
            "model.n_layer=choice(2,4,6)",
            "optim.warmup_iters=range(0,200,50)",
            "model.n_head=tag(int, interval(1, 8))",
            "data=a,b",
            "model=tiny",
        ]
    )
    d = optuna.distributions
    assert space.distributions == {
        "optim.lr": d.FloatDistribution(1e-4, 1e-2, log=True),
        "model.n_layer": d.CategoricalDistribution([2, 4, 6]),
        "optim.warmup_iters": d.IntDistribution(0, 150, step=50),
        "model.n_head": d.IntDistribution(1, 8),
        "data": d.CategoricalDistribution(["a", "b"]),
    }
    assert space.fixed == ["model=tiny"]
    trial = space.overrides({"optim.lr": 1e-3, "model.n_layer": 4})
    assert trial == ["model=tiny", "optim.lr=0.001", "model.n_layer=4"]
    grid = parse(["a=choice(1,2)", "b=range(0,30,10)"]).grid()
    assert grid == {"a": [1, 2], "b": [0, 10, 20]}
    with pytest.raises(UserError, match="cannot grid optim.lr"):
        parse(["optim.lr=interval(0.1, 0.2)"]).grid()


def test_a_tiny_study_end_to_end(study_sweep):
    study = load(study_sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:
        job = study_sweep / str(t.number)
        assert status(job)["status"] == "completed"
        # The objective is the run's best val loss, as its own metrics.jsonl has it.
        assert t.values == [min(r["val_loss"] for r in metrics(job) if "val_loss" in r)]
        assert 1e-4 <= t.params["optim.lr"] <= 3e-2 and t.params["model.n_layer"] in (1, 2)
        assert t.params["optim.warmup_iters"] in (0, 10)
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"optim.lr={t.params['optim.lr']!r}" in overrides
        assert f"model.n_layer={t.params['model.n_layer']}" in overrides
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["optim"]["lr"] == t.params["optim.lr"] and config["model"]["n_layer"] == t.params["model.n_layer"]
    assert len({t.params["optim.lr"] for t in study.trials}) == 3

    # The sweep report's study section: the trials, the best one's command, its history and importances.
    report = (study_sweep / "report.md").read_text()
    best = study.best_trial
    assert (
        "## Optuna study `default`" in report
        and f"Best: trial {best.number} (best_val_loss {best.value:.4f})" in report
    )
    assert f"optim.lr={best.params['optim.lr']!r}" in report.split("rerun it with")[1].splitlines()[2]
    assert "Parameter importances for best_val_loss" in report and (study_sweep / "study_history.png").is_file()
    rows = read_csv(study_sweep / "trials.csv")
    assert [(int(r["trial"]), r["state"], float(r["best_val_loss"])) for r in rows] == [
        (t.number, "complete", t.value) for t in study.trials
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=interval(1e-4, 1e-2)", "optim.lrr"),
        ("optim.lr=interval(1e-2, 1e-4)", "optim.lr=interval(1e-2, 1e-4)"),
        ("optim.lr=interval(1e-2)", "optim.lr=interval(1e-2)"),
        ("hydra.sweeper.objective=val_accuracy", "hydra.sweeper.objective=val_accuracy: no run logs it"),
        ("hydra.sweeper.direction=lower", "hydra.sweeper.direction=lower: give minimize or maximize"),
        ("hydra.sweeper.study_name=another", "holds study 'default', not 'another'"),
        ("optim.beta2=choice(0.9,0.99)", "was started with another params"),
    ],
)
def test_bad_input_is_one_line_and_the_study_is_untouched(study_sweep, tmp_path, char_data, override, message):
    before = {p.name: p.stat().st_mtime_ns for p in study_sweep.rglob("*")}
    journal = (study_sweep / "study.journal").read_bytes()
    proc = run_entry("run.py", *sweep_args(char_data, study_sweep, override), cwd=tmp_path, check=False)
    one_line_error(proc, message)
    assert (study_sweep / "study.journal").read_bytes() == journal
    assert {p.name: p.stat().st_mtime_ns for p in study_sweep.rglob("*")} == before


def test_a_sweep_killed_mid_trial_ends_as_an_unbroken_one(study_sweep, tmp_path, char_data):
    sweep = tmp_path / "sweep"
    proc = popen_entry("run.py", *sweep_args(char_data, sweep), cwd=tmp_path)

    def trial_1_checkpointed() -> bool:  # past its first checkpoint (iter 40), not finished
        job = sweep / "1"
        return (
            (job / "checkpoints").is_dir()
            and any(r["iter"] > 50 for r in metrics(job))
            and not (job / "status.json").exists()
        )

    wait_for("trial 1 to train past its first checkpoint", trial_1_checkpointed, proc=proc, poll=0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert load(sweep).trials[1].state.name == "RUNNING"
    rerun = run_entry("run.py", *sweep_args(char_data, sweep), cwd=tmp_path)
    assert "trial 1 was interrupted: resuming" in rerun.stderr + rerun.stdout
    assert "resumed from" in (sweep / "1" / "run.log").read_text()
    assert outcome(load(sweep)) == outcome(load(study_sweep))


def test_the_median_pruner_stops_trials_from_their_evaluations(tmp_path, char_data):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *TINY,
        f"paths.data_dir={char_data}",
        "hydra/sweeper=optuna",
        "hydra.sweeper.sampler.name=grid",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruner_startup_trials=1",
        "optim.lr=choice(1e-2,1e-5,1e-6)",
        "optim.min_lr=0",
        "train.max_iters=60",
        "train.eval_interval=10",
        f"hydra.sweep.dir={sweep}",
    ]
    run_entry("run.py", *args, cwd=tmp_path)
    study = load(sweep)
    states = {t.params["optim.lr"]: t.state.name for t in study.trials}
    assert len(states) == 3 and "PRUNED" in states.values() and states[1e-2] == "COMPLETE", states
    for t in study.trials:
        job = status(sweep / str(t.number))
        assert job["status"] == t.state.name.lower().replace("complete", "completed")
        if t.state.name == "PRUNED":
            assert job["iter"] < 60 and sorted(t.intermediate_values)[-1] == job["iter"]
            assert t.intermediate_values[job["iter"]] == job["val_loss"]
    assert json.loads((sweep / "0" / "trial.json").read_text())["pruner"] == "median"
    assert "3 trials (2 complete, 1 pruned)" in (sweep / "report.md").read_text()
