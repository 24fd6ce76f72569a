"""Compute budgets, the depth dial and the IsoFLOP analysis: FLOPs accounting against a hand computation, the
fit against a known law, bad input as one line, and a real tiny sweep end to end, resumed exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from nanogpt import optim
from nanogpt.config import DEFAULT_MAX_ITERS, ModelConfig, RunConfig, TrainConfig
from nanogpt.errors import UserError
from nanogpt.sweeps import budgets, isoflop
from nanogpt.validation import validate
from tests.helpers import OFFLINE_ENV, REPO, TINY, run_dirs, run_entry

# ---- FLOPs accounting ----


def hand_count(L: int, d: int, vocab: int, T: int, *, bias: bool, tied: bool, qk_head: int = 0) -> tuple[int, int]:
    """(N, training FLOPs per token) written out: per block the four matmuls (qkv 3d², out d², MLP 8d²), their
    biases (3d + d + 4d + d), two LayerNorms (d gains, d biases); the final LayerNorm; the head (V x d), which
    the tied embedding shares; no position table. 6N, plus 12 L d T for attention's scores and weighted sum."""
    per_block = 12 * d * d + (9 * d if bias else 0) + 2 * (2 * d if bias else d) + 2 * qk_head
    n = L * per_block + (2 * d if bias else d) + vocab * d
    return n, 6 * n + 12 * L * d * T


SHAPES = {
    # depth 2 x aspect 32, heads of 16 (scaling_cpu's family); char vocabulary, unpadded; GPT-2 choices otherwise.
    "depth": (
        dict(depth=2, aspect_ratio=32, head_dim=16, block_size=64, bias=False, pad_vocab_multiple=1),
        65,
        dict(L=2, d=64, vocab=65, T=64, bias=False, tied=True),
    ),
    # An explicit shape with the modern options: biases, untied head, rotary (no position table), QK-norm gains,
    # GPT-2's vocabulary padded to 50304.
    "modern": (
        dict(
            n_layer=3,
            n_head=4,
            n_embd=96,
            block_size=128,
            bias=True,
            tie_embeddings=False,
            rotary=True,
            qk_norm=True,
            activation="relu2",
            pad_vocab_multiple=64,
        ),
        50257,
        dict(L=3, d=96, vocab=50304, T=128, bias=True, tied=False, qk_head=24),
    ),
}


def run_config(model: dict, **train) -> RunConfig:
    cfg = RunConfig(model=ModelConfig(**model), train=TrainConfig(**train))
    cfg.data.name = "shakespeare_char"
    validate(cfg)
    return cfg


@pytest.mark.parametrize("shape", SHAPES)
def test_flops_budget_gives_the_hand_computed_steps_and_is_spent_within_one_step(shape):
    model, data_vocab, hand = SHAPES[shape]
    n, per_token = hand_count(**hand)
    per_step = 8 * 3 * hand["T"] * per_token  # batch 8 x grad_accum 3 x block_size
    for budget in (1.0 * per_step, 1e3 * per_step + 0.49 * per_step, 2.5e5 * per_step, 7.77e6 * per_step):
        cfg, plan = budgets.resolve(run_config(model, flops_budget=budget, batch_size=8, grad_accum=3), data_vocab)
        assert (plan.params, plan.flops_per_token) == (n, per_token)
        assert plan.tokens_per_step == 24 * hand["T"]
        assert cfg.train.max_iters == plan.max_iters == round(budget / per_step)
        assert abs(plan.flops - budget) <= per_step / 2 and plan.flops == plan.max_iters * per_step
        assert plan.tokens == plan.max_iters * plan.tokens_per_step
    # The model itself agrees (the plan counts on the meta device).
    from nanogpt.model import GPT

    built = GPT(dataclasses.replace(cfg.model, vocab_size=hand["vocab"]))
    assert (built.num_params(), built.flops_per_token()) == (n, per_token)


def test_tokens_budget_and_depth_dial():
    cfg, plan = budgets.resolve(
        run_config(dict(depth=3, aspect_ratio=32, head_dim=16, block_size=64), tokens_budget=1e6, batch_size=12), 65
    )
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd) == (3, 6, 96)
    assert (plan.n_layer, plan.n_head, plan.n_embd, plan.depth) == (3, 6, 96, 3)
    assert cfg.train.max_iters == round(1e6 / (12 * 64)) == 1302
    assert abs(plan.tokens - 1e6) <= 12 * 64 / 2
    # No budget: max_iters as given, else the default; the schedule follows the run's length.
    assert budgets.resolve(run_config({}, max_iters=7000), 65)[0].train.max_iters == 7000
    assert budgets.resolve(run_config({}), 65)[0].train.max_iters == DEFAULT_MAX_ITERS


def test_the_schedule_follows_a_budget_run(caplog):
    model = dict(depth=1, aspect_ratio=16, head_dim=16)
    cfg, plan = budgets.resolve(run_config(model, tokens_budget=12 * 1024 * 50), 65)
    assert plan.max_iters == 50
    # A warmup longer than the run is fitted to it, as for any short run; the cosine ends with the run.
    o = optim.fit_schedule(cfg.optim, cfg.train.max_iters)
    assert o.warmup_iters == 50 and "optim.warmup_iters=2000 is longer than the run" in caplog.text
    o = dataclasses.replace(o, warmup_iters=10)
    assert optim.lr_factor(49, o, 50) > o.min_lr / o.lr and optim.lr_factor(50, o, 50) == o.min_lr / o.lr
    # An explicit decay length that is not the budget's is kept, with a warning.
    cfg = run_config(model, tokens_budget=12 * 1024 * 50)
    cfg.optim = dataclasses.replace(cfg.optim, warmup_iters=10, lr_decay_iters=40)
    assert budgets.resolve(cfg, 65)[0].optim.lr_decay_iters == 40
    assert "optim.lr_decay_iters=40 with a budget of 50 steps" in caplog.text


@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        (
            dict(depth=3, aspect_ratio=24, head_dim=16),
            {},
            "model.depth=3 gives a width of 3 x model.aspect_ratio=24 = "
            "72, not a multiple of model.head_dim=16: use a depth that is a multiple of 2",
        ),
        ({}, dict(flops_budget=1e15, max_iters=100), "train.max_iters=100 and train.flops_budget=1e+15 both set"),
        (
            {},
            dict(flops_budget=1e15, tokens_budget=1e9),
            "train.flops_budget=1e+15 and train.tokens_budget=1e+09 both set the run's length: keep one",
        ),
        ({}, dict(tokens_budget=-5.0), "train.tokens_budget=-5 must be > 0"),
        (dict(depth=0), {}, "model.depth=0 must be > 0"),
    ],
)
def test_bad_budgets_and_depths_are_refused(model, train, message):
    with pytest.raises(UserError, match="^" + message.replace("+", r"\+").replace("(", r"\(")):
        run_config(model, **train)


def test_budget_smaller_than_one_step_is_refused():
    with pytest.raises(UserError, match=r"train.flops_budget=1e\+06 is less than one optimizer step \("):
        budgets.resolve(run_config({}, flops_budget=1e6), 65)


# ---- the fit, on jobs drawn from a known law ----

# Chinchilla's fitted law (Hoffmann et al. 2022, approach 3): L = E + A / N^alpha + B / D^beta. At fixed C = 6ND the
# optimum is N_opt ∝ C^(beta / (alpha + beta)) and D_opt ∝ C^(alpha / (alpha + beta)).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def synthetic_jobs(budgets: list[float], per_budget: int = 7, noise: float = 0.002, seed: int = 0) -> list:
    """Jobs of a sweep that trained exactly to the law (plus a little noise), on one grid of sizes shared by every
    budget, as a real sweep over depths is: the grid covers each budget's optimum unevenly."""
    rng = np.random.default_rng(seed)
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    n_opt = [g * (c / 6) ** (BETA / (ALPHA + BETA)) for c in budgets]
    grid = np.geomspace(min(n_opt) / 5, max(n_opt) * 5, 3 * per_budget)
    points = []
    for c, opt in zip(budgets, n_opt, strict=True):
        for n in grid[(grid > opt / 6) & (grid < opt * 6)]:
            d = c / (6 * n)
            loss = E + A / n**ALPHA + B / d**BETA + rng.normal(0, noise)
            points.append(isoflop.Point(str(len(points)), c, "completed", int(n), int(d), c, loss, 1000.0))
    return points


def test_fit_recovers_the_exponents_of_a_known_law(tmp_path):
    points = synthetic_jobs([1e18, 3e18, 1e19, 3e19, 1e20])
    # Failed and unfinished jobs are shown but stay out of the fits, even with a loss that would move them.
    points += [isoflop.Point("98", 1e19, "failed"), isoflop.Point("99", 1e19, "interrupted", 10**6, 10**9, 1e19, 0.5)]
    a = isoflop.analyse(points)
    assert abs(a.n_law.exponent - BETA / (ALPHA + BETA)) < 0.02
    assert abs(a.d_law.exponent - ALPHA / (ALPHA + BETA)) < 0.02
    assert a.warnings == [] and all(f.in_grid and len(f.points) >= 5 for f in a.fits)
    assert not any(p.job in ("98", "99") for f in a.fits for p in f.points)

    lines, paths = isoflop.report(points, str(tmp_path))
    text = "\n".join(lines)
    assert f"**N_opt ∝ C^{a.n_law.exponent:.3f}, D_opt ∝ C^{a.d_law.exponent:.3f}**" in text
    assert "| 99 | 1e+19 |  | 1M | 1G | 1e+19 | 0.5000 | " in text and "| 98 | 1e+19 |" in text
    assert [Path(p).name for p in paths] == ["isoflop.png", "frontier.png"]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_fit_warns_about_too_few_points_and_minima_at_the_edge():
    points = synthetic_jobs([1e18, 1e19, 1e20])
    few = [p for p in points if p.budget == 1e18][:2]
    low = sorted((p for p in points if p.budget == 1e20), key=lambda p: p.params)[:4]  # only the small models
    a = isoflop.analyse(few + [p for p in points if p.budget == 1e19] + low)
    assert a.warnings[0] == "budget 1e+18: 2 finished job(s), a parabola needs 3 sizes: no minimum"
    assert a.warnings[1].startswith("budget 1e+20: the lowest loss is at the grid's largest model (N=")
    assert a.warnings[1].endswith("add larger depths")
    assert (
        a.warnings[2].startswith("budget 1e+20: the fitted minimum N=")
        and "left out of the power laws" in a.warnings[2]
    )
    assert a.warnings[3] == "1 budget(s) with a minimum inside the grid: the power laws need 2 or more"
    assert a.n_law is None and [f.in_grid for f in a.fits] == [False, True, False]


# ---- through the entry points ----


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_bad_input_through_run_py_is_one_line(tmp_path, char_data):
    common = [*TINY, f"paths.data_dir={char_data}"]
    line = one_line_error(run_entry("run.py", *common, "train.flops_budget=1e5", cwd=tmp_path, check=False))
    assert line.startswith("error: train.flops_budget=100000 is less than one optimizer step (")
    line = one_line_error(
        run_entry("run.py", *common, "train.flops_budget=1e12", "train.max_iters=50", cwd=tmp_path, check=False)
    )
    assert line.startswith("error: train.max_iters=50 and train.flops_budget=1e+12 both set the run's length")
    line = one_line_error(
        run_entry(
            "run.py", *common, "model.depth=3", "model.aspect_ratio=20", "model.head_dim=16", cwd=tmp_path, check=False
        )
    )
    assert line.startswith("error: model.depth=3 gives a width of 3 x model.aspect_ratio=20 = 60, not a multiple")


# A tiny scaling sweep: the scaling_cpu preset shrunk to seconds. Depths 1-3 (N 4k, 27k, 86k) at two budgets;
# the smaller budget is less than one step of depth 3, so that job fails, is recorded and stays out of the fits.
TINY_SWEEP = [
    "experiment=scaling_cpu",
    "model.block_size=32",
    "train.batch_size=4",
    "train.eval_iters=2",
    "optim.warmup_iters=2",
    "model.aspect_ratio=16",
    "model.head_dim=16",
    "train.flops_budget=5e7,2e8",
    "model.depth=1,2,3",
]


def test_tiny_scaling_sweep_end_to_end(tmp_path, char_data):
    run_entry("run.py", "-m", *TINY_SWEEP, f"paths.data_dir={char_data}", cwd=tmp_path)
    [sweep] = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    jobs = {j.name: j for j in sweep.iterdir() if j.name.isdigit()}
    assert sorted(jobs, key=int) == [str(i) for i in range(6)]
    statuses = {n: json.loads((j / "status.json").read_text()) for n, j in jobs.items()}
    assert statuses["2"]["status"] == "failed" and "less than one optimizer step" in statuses["2"]["error"]
    for n, job in jobs.items():
        assert (job / ".hydra" / "config.yaml").exists()
        if n == "2":
            continue
        plan = json.loads((job / "plan.json").read_text())
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        per_step = 4 * 32 * plan["flops_per_token"]
        assert statuses[n]["status"] == "completed" and statuses[n]["iter"] == plan["max_iters"]
        assert plan["depth"] == cfg.model.depth and plan["flops_budget"] == cfg.train.flops_budget
        assert abs(plan["flops"] - cfg.train.flops_budget) <= per_step / 2
        assert cfg.train.max_iters is None  # the saved config says what was asked; plan.json what it bought

    report = (sweep / "report.md").read_text()
    assert "## Scaling: IsoFLOP profiles" in report and "![isoflop](isoflop.png)" in report
    assert "| 5e+07 | 2 of 3 |  |  |  |  | no minimum |" in report and "| 2e+08 | 3 of 3 |" in report
    assert "- budget 5e+07: 2 finished job(s), a parabola needs 3 sizes: no minimum" in report
    assert "| 2 | 5e+07 | 3 |  |  |  |  |  | failed |" in report
    assert (sweep / "isoflop.png").read_bytes()[:4] == b"\x89PNG"

    # The command line writes the same report again.
    for f in ("report.md", "isoflop.png"):
        (sweep / f).unlink()
    out = subprocess.run(
        [sys.executable, "-m", "nanogpt.sweeps", str(sweep)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=True,
    ).stdout
    assert "## Scaling: IsoFLOP profiles" in out and (sweep / "report.md").read_text() == report
    assert (sweep / "isoflop.png").exists()


def _env() -> dict:
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO)}


def test_budget_job_of_a_sweep_resumes_exactly(tmp_path, char_data):
    """A budget job stopped mid-way and resumed from its dir derives the same length and ends bit-identical to
    one never stopped."""
    args = [
        *TINY,
        f"paths.data_dir={char_data}",
        "model.depth=2",
        "model.aspect_ratio=16",
        "model.head_dim=16",
        "train.tokens_budget=19200",
        "train.eval_interval=100",
        "model.dropout=0.1",
    ]
    (tmp_path / "straight").mkdir()
    run_entry("run.py", *args, cwd=tmp_path / "straight")
    [straight] = run_dirs(tmp_path / "straight")
    assert json.loads((straight / "plan.json").read_text())["max_iters"] == round(19200 / 128) == 150

    (tmp_path / "swept").mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), "-m", *args],
        cwd=tmp_path / "swept",
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = _wait_for_job_past(tmp_path / "swept", 30, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert json.loads((job / "status.json").read_text())["status"] == "interrupted"
    stopped_at = max(json.loads(line)["iter"] for line in (job / "metrics.jsonl").read_text().splitlines())
    assert 30 <= stopped_at < 149

    run_entry("run.py", f"resume={job}", cwd=tmp_path / "swept")
    assert f"at iter {stopped_at + 1}" in (job / "run.log").read_text()  # from the checkpoint saved on the signal
    assert json.loads((job / "status.json").read_text())["iter"] == 150
    a, b = (load_file(str(run / "checkpoints/latest/model.safetensors")) for run in (straight, job))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def _wait_for_job_past(base: Path, it: int, proc: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for metrics in base.glob("multirun/*/*/0/metrics.jsonl"):
            lines = metrics.read_text().splitlines()
            if len(lines) > 1 and json.loads(lines[-2]).get("iter", 0) >= it:
                return metrics.parent
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"the job did not reach iter {it}")
