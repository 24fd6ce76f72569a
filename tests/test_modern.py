"""The modern recipe (issue 6): each model option and Muon train through run.py, resume is exact with Muon, and the
fast presets keep the classic ones' data, eval protocol and tokens per step. (Generation with the KV cache against
full recompute, for every option: test_model.py.)"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch

from nanogpt import optim
from nanogpt.config import OptimConfig, RunConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.validation import validate
from tests.helpers import (
    MODEL_OPTIONS,
    REPO,
    TINY_GPT,
    assert_resume_is_exact,
    assert_same_weights,
    compose,
    metrics,
    run_entry,
    status,
    tiny_gpt,
    train,
    weights,
)

ALL = MODEL_OPTIONS["all"]
# The options as run.py overrides.
FLAGS = {k: [f"model.{name}={str(v).lower()}" for name, v in opts.items()] for k, opts in MODEL_OPTIONS.items()}


# ---- the model ----


def test_defaults_are_gpt2():
    """No option set: GPT-2's parameters and names, so OpenAI's weights still load (test_model checks logits)."""
    names = set(tiny_gpt().state_dict())
    assert {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"} <= names
    assert not any("norm" in n for n in names)
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight


def test_each_option_changes_what_it_says():
    assert "transformer.wpe.weight" not in tiny_gpt(rotary=True).state_dict()  # positions are in attention now
    assert {"transformer.h.0.attn.q_norm.weight", "transformer.h.0.attn.k_norm.weight"} <= set(
        tiny_gpt(qk_norm=True).state_dict()
    )
    untied = tiny_gpt(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    torch.manual_seed(0)
    zero = GPT(dataclasses.replace(TINY_GPT, **MODEL_OPTIONS["zero_init"]))
    assert not zero.lm_head.weight.any() and all(not b.attn.c_proj.weight.any() for b in zero.transformer.h)
    assert all(not b.mlp.c_proj.weight.any() for b in zero.transformer.h) and zero.transformer.wte.weight.any()
    # A zero head predicts the uniform distribution: the loss at init is exactly ln(vocab).
    x = torch.randint(0, 101, (2, 48))
    assert abs(zero(x, x)[1].item() - torch.log(torch.tensor(101.0)).item()) < 1e-5
    relu2 = tiny_gpt(activation="relu2").transformer.h[0].mlp.act
    assert torch.equal(relu2(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor([0.0, 0.0, 9.0]))


def test_all_options_run_in_bf16_without_warnings():
    """The CPU presets train under bf16 autocast on AMX CPUs (q and k arrive in bf16 at the fp32 QK-norm gains),
    and sample.py then generates with the weights themselves in bf16."""
    import warnings

    from nanogpt.config import DeviceConfig
    from nanogpt.device import resolve

    model = tiny_gpt(**ALL)
    x = torch.randint(0, 101, (2, 48))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with resolve(DeviceConfig(device="cpu", dtype="bfloat16")).autocast():
            logits, loss = model(x, x)
        loss.backward()
        assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)
        out = model.to(torch.bfloat16).generate(x[:1, :8], 10, temperature=0.0)
    assert out.shape == (1, 18)


def test_rotary_generation_past_block_size():
    model = tiny_gpt(**ALL)
    out = model.generate(torch.randint(0, 101, (1, 60)), 70, temperature=1.0, generator=torch.Generator())
    assert out.shape == (1, 130)
    model.crop_block_size(32)  # rotary has no table to crop
    assert model(torch.randint(0, 101, (1, 32)))[0].shape == (1, 32, 101)


def test_flops_count_untied_embedding_as_lookup():
    tied, untied = tiny_gpt(), tiny_gpt(tie_embeddings=False, rotary=True)
    assert untied.num_params(non_embedding=False) == tied.num_params(non_embedding=False) - 48 * 64 + 101 * 64
    assert untied.num_params() == untied.num_params(non_embedding=False) - 101 * 64  # wte is not a matmul


# ---- Muon ----


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = tiny_gpt(**ALL)
    adamw, muon = optim.build(model, OptimConfig(name="muon", lr=1e-3, muon_lr=0.05), "cpu")
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    hidden = {id(p) for b in model.transformer.h for p in b.parameters() if p.dim() == 2}
    in_muon = [p for g in muon.param_groups for p in g["params"]]
    in_adamw = [p for g in adamw.param_groups for p in g["params"]]
    assert {id(p) for p in in_muon} == hidden and len(in_muon) == 4 * 2
    assert len(in_muon) + len(in_adamw) == len(list(model.parameters())) and not hidden & {id(p) for p in in_adamw}
    assert {id(model.lm_head.weight), id(model.transformer.wte.weight)} <= {id(p) for p in in_adamw}
    assert [g["initial_lr"] for g in muon.param_groups] == [0.05]
    assert {g["initial_lr"] for g in adamw.param_groups} == {1e-3}
    optim.set_lr([adamw, muon], 0.5)
    assert muon.param_groups[0]["lr"] == 0.025 and adamw.param_groups[0]["lr"] == 5e-4


def test_muon_state_loads_with_weights_only():
    model = tiny_gpt(**ALL).train()
    optimizers = optim.build(model, OptimConfig(name="muon"), "cpu")
    x = torch.randint(0, 101, (2, 48))
    model(x, x)[1].backward()
    for opt in optimizers:
        opt.step()
    buf = io.BytesIO()
    torch.save([opt.state_dict() for opt in optimizers], buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert len(saved[1]["state"]) == 8 and all("momentum_buffer" in s for s in saved[1]["state"].values())


def test_batched_muon_equals_torch_muon_bit_for_bit():
    """nanogpt.muon.BatchedMuon (the Newton-Schulz iterations batched per matrix shape) takes the same steps as
    torch.optim.Muon, one matrix at a time, to the bit, and keeps its state format; in fp32 (CPUs without bf16 dot
    products) it stays within bf16's rounding of them."""
    from nanogpt.muon import BatchedMuon

    torch.manual_seed(0)
    shapes = [(96, 32), (32, 32), (128, 32), (32, 128)] * 2 + [(40, 24)]
    start = [torch.randn(s) * 0.02 for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    hyper = dict(lr=0.02, weight_decay=0.01, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="original")
    results = []
    for make in (
        lambda ps: torch.optim.Muon(ps, **hyper),
        lambda ps: BatchedMuon(ps, **hyper),
        lambda ps: BatchedMuon(ps, ns_dtype=torch.float32, **hyper),
    ):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = make(params)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append((params, opt.state_dict()))
    (ref, ref_state), (batched, batched_state), (fp32, _) = results
    assert all(torch.equal(a, b) for a, b in zip(ref, batched, strict=True))
    assert ref_state["param_groups"] == batched_state["param_groups"]
    assert all(
        torch.equal(ref_state["state"][i]["momentum_buffer"], batched_state["state"][i]["momentum_buffer"])
        for i in ref_state["state"]
    )
    moved = [(b - s).abs().max() for b, s in zip(ref, start, strict=True)]
    assert all((f - b).abs().max() < 0.05 * m for f, b, m in zip(fp32, ref, moved, strict=True))


# ---- validation ----


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(model=dict(activation="swiglu")), "model.activation='swiglu': use gelu, gelu_exact, relu2"),
        (dict(model=dict(zero_init_head=True)), "model.zero_init_head=true would zero the tied token embedding"),
        (dict(model=dict(rotary=True, n_embd=60, n_head=4)), "model.rotary=true needs an even head size"),
        (dict(model=dict(qk_norm=True), init_from="gpt2"), "model.qk_norm=true changes GPT-2's architecture"),
        (dict(optim=dict(name="sgd")), "optim.name='sgd' is not an optimizer we have: use adamw or muon"),
        (dict(optim=dict(muon_momentum=1.0)), "optim.muon_momentum=1.0 must be in [0, 1)"),
        (dict(optim=dict(muon_ns_steps=0)), "optim.muon_ns_steps=0 must be in [1, 99]"),
        (dict(optim=dict(name="muon"), train=dict(parallel="fsdp")), "optim.name=muon orthogonalises whole matrices"),
    ],
)
def test_bad_options_are_one_line_errors(change, message):
    cfg = RunConfig()
    for key, value in change.items():
        if isinstance(value, dict):
            setattr(cfg, key, dataclasses.replace(getattr(cfg, key), **value))
        else:
            setattr(cfg, key, value)
    with pytest.raises(UserError) as e:
        validate(cfg)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


# ---- through run.py ----


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_each_option_trains(tmp_path, char_data, option):
    optimizer = ["optim=muon", "optim.warmup_iters=2"] if option == "all" else []
    run = train(tmp_path, char_data, "train.max_iters=4", "train.eval_interval=4", *FLAGS[option], *optimizer)
    assert status(run)["status"] == "completed"
    steps = [r["loss"] for r in metrics(run) if "loss" in r]
    assert len(steps) == 4 and all(0 < s < 10 for s in steps)
    saved = json.loads((run / "checkpoints" / "latest" / "info.json").read_text())["model"]
    assert all(saved[name] == value for name, value in MODEL_OPTIONS[option].items())
    if option == "all":  # the checkpoint rebuilds the same model for sampling
        out = run_entry(
            "sample.py",
            f"run={run}",
            "start=ROMEO:",
            "num_samples=1",
            "max_new_tokens=40",
            "temperature=0",
            cwd=tmp_path,
        ).stdout
        assert out.startswith("ROMEO:") and len(out.split("---------------")[0].strip()) >= 40


def test_resume_is_bit_exact_with_muon(tmp_path, char_data):
    common = [
        "optim=muon",
        "optim.warmup_iters=2",
        "train.eval_interval=8",
        "optim.lr_decay_iters=24",
        "model.dropout=0.1",
        *FLAGS["all"],
    ]
    first = assert_resume_is_exact(tmp_path, char_data, 8, 24, *common)
    before = weights(first)
    proc = run_entry("run.py", f"resume={first}", "optim.name=adamw", "train.max_iters=30", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "holds 2 optimizer state(s) but optim.name needs 1" in proc.stderr
    assert_same_weights(before, weights(first))  # the refused resume changed nothing
    assert status(first)["status"] == "completed"
    state = torch.load(first / "checkpoints" / "latest" / "trainer.pt", weights_only=True)
    assert len(state["optimizers"]) == 2 and "momentum_buffer" in next(iter(state["optimizers"][1]["state"].values()))


# ---- presets ----


@pytest.mark.parametrize("classic", ["shakespeare_char_cpu", "shakespeare_char"])
def test_fast_presets_keep_data_eval_and_tokens_per_step(classic):
    old, new = compose(f"experiment={classic}"), compose(f"experiment={classic}_fast")
    assert new.data == old.data and new.device == old.device and new.init_from == old.init_from == "scratch"
    t_old, t_new = old.train, new.train
    for key in ("batch_size", "grad_accum", "eval_iters", "log_interval"):
        assert getattr(t_new, key) == getattr(t_old, key), key
    assert t_new.eval_interval <= t_old.eval_interval  # as often or more: its time to the classic's loss is read there
    assert new.model.block_size == old.model.block_size
    assert new.optim.name == "muon" and new.model.rotary and new.name == f"{classic}_fast"


def test_sweep_config_composes():
    sweep = Path(REPO / "conf" / "experiment" / "sweep_fast_cpu.yaml").read_text()
    assert "hydra:" in sweep and "params:" in sweep
    cfg = compose("experiment=sweep_fast_cpu")
    assert cfg.name == "sweep_fast_cpu" and cfg.optim.name == "muon"
