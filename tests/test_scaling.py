"""Compute budgets, the depth dial and the IsoFLOP analysis: FLOPs accounting against a hand computation,
bad input as one line, and a real tiny sweep (seeds as an axis) end to end, resumed exactly; the fits themselves
are tested in test_scaling_fits.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from nanogpt import optim
from nanogpt.config import DEFAULT_MAX_ITERS, ModelConfig, RunConfig, TrainConfig
from nanogpt.errors import UserError
from nanogpt.sweeps import budgets
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
    "seed=1,2",  # seeds as a sweep axis: the report averages each (budget, depth) over them
]


def test_tiny_scaling_sweep_end_to_end(tmp_path, char_data):
    run_entry("run.py", "-m", *TINY_SWEEP, f"paths.data_dir={char_data}", cwd=tmp_path)
    [sweep] = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    jobs = {j.name: j for j in sweep.iterdir() if j.name.isdigit()}
    assert sorted(jobs, key=int) == [str(i) for i in range(12)]  # 2 budgets x 3 depths x 2 seeds
    statuses = {n: json.loads((j / "status.json").read_text()) for n, j in jobs.items()}
    configs = {n: OmegaConf.load(j / ".hydra" / "config.yaml") for n, j in jobs.items()}
    failed = {n for n, st in statuses.items() if st["status"] == "failed"}
    assert {(configs[n].train.flops_budget, configs[n].model.depth) for n in failed} == {(5e7, 3)}
    assert {configs[n].seed for n in failed} == {1, 2}
    assert all("less than one optimizer step" in statuses[n]["error"] for n in failed)
    for n, job in jobs.items():
        if n in failed:
            continue
        plan = json.loads((job / "plan.json").read_text())
        cfg = configs[n]
        per_step = 4 * 32 * plan["flops_per_token"]
        assert statuses[n]["status"] == "completed" and statuses[n]["iter"] == plan["max_iters"]
        assert plan["depth"] == cfg.model.depth and plan["flops_budget"] == cfg.train.flops_budget
        assert abs(plan["flops"] - cfg.train.flops_budget) <= per_step / 2
        assert cfg.train.max_iters is None  # the saved config says what was asked; plan.json what it bought
    # The seeds train differently: the same (budget, depth) ends at another loss.
    losses = {(c.train.flops_budget, c.model.depth, c.seed): statuses[n].get("val_loss") for n, c in configs.items()}
    assert losses[(2e8, 2, 1)] != losses[(2e8, 2, 2)]

    report = (sweep / "report.md").read_text()
    assert "## Scaling: IsoFLOP profiles (approach 2)" in report and "![isoflop](isoflop.png)" in report
    assert "| 5e+07 | 4 of 6 |  |  |  |  | no minimum |" in report and "| 2e+08 | 6 of 6 |" in report
    assert "- budget 5e+07: 2 finished size(s), a parabola needs 3: no minimum" in report
    for n in failed:
        assert f"- job {n} (budget 5e+07, depth 3, seed {configs[n].seed}) failed: left out of the fits" in report
        assert f"| {n} | 5e+07 | 3 | {configs[n].seed} |  |  |  |  |  | failed |" in report
    assert "Each (budget, size) is the mean over its seeds (1, 2)." in report
    assert "| budget C | N | D | seeds | mean val loss | std over seeds | jobs |" in report
    assert "## Scaling: one law L(N, D) (approach 3)" in report  # 5 sizes: fewer than 6, no fit
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
