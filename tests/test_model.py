"""The GPT against Hugging Face's GPT-2, the KV cache against full recompute (GPT-2's model, without biases, and
with each modern option), and the sampling filters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nanogpt import model as gpt_model
from nanogpt.config import ModelConfig
from nanogpt.model import GPT, KVCache, matvecs_in_row_blocks, sample_next
from tests.helpers import MODEL_OPTIONS, tiny_gpt

# GPT-2's model (biases), without biases, and each modern option.
VARIANTS = {"gpt2": {}, "no_bias": dict(bias=False), **MODEL_OPTIONS}


@pytest.mark.parametrize("hf_activation", ["gelu_new", "gelu"])  # GPT-2's tanh GELU; the exact one (gelu_exact)
def test_logits_equal_huggingface_gpt2(hf_activation):
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt.pretrained import from_hf_model

    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=101, n_positions=48, n_embd=64, n_layer=2, n_head=4, activation_function=hf_activation
    )
    hf = GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # random biases and norms too, so every mapped tensor matters
        for p in hf.parameters():
            p.normal_(0, 0.1)
    ours = from_hf_model(hf).eval()
    assert ours.config.activation == {"gelu_new": "gelu", "gelu": "gelu_exact"}[hf_activation]
    idx = torch.randint(0, 101, (3, 48))
    with torch.no_grad():
        expected = hf(idx).logits
        got, _ = ours(idx)
    assert (got - expected).abs().max().item() < 1e-5


def test_parameter_count_matches_nanogpt_baby_cpu():
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False))
    assert round(model.num_params() / 1e6, 2) == 0.80  # nanoGPT prints 0.80M for this recipe


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_generation_with_cache_equals_full_recompute(variant):
    model = tiny_gpt(**VARIANTS[variant])
    prompt = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, 35, temperature=0.0)
    idx = prompt
    for _ in range(35):  # nanoGPT's way: the whole sequence through the model for every token
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1, :].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, idx)


@pytest.mark.parametrize("variant", ["gpt2", "rotary", "all"])
def test_cache_logits_equal_full_forward_at_every_position(variant):
    """Prefill, a chunk, then single tokens: rotary must rotate each at its absolute position cache.pos + t."""
    model = tiny_gpt(**VARIANTS[variant])
    seq = torch.randint(0, 101, (2, 48))
    full, _ = model(seq)
    cache = KVCache(model.config, 2, seq.device, torch.float32)
    pieces = [model(seq[:, :10], cache=cache)[0], model(seq[:, 10:25], cache=cache)[0]]
    pieces += [model(seq[:, i : i + 1], cache=cache)[0] for i in range(25, 48)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_generation_past_block_size_and_long_prompts():
    model = tiny_gpt()
    prompt = torch.randint(0, 101, (1, 100))  # longer than block_size 48: cropped
    out = model.generate(prompt, 120, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 220)
    assert torch.equal(out[:, :100], prompt)


@pytest.mark.parametrize("blocks", [2, 3, 7])  # 3 and 7 leave rows over: the remainder's own product
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_in_row_blocks_equals_linear(monkeypatch, blocks, bias):
    """Each shape a one-row input comes in, against F.linear; other inputs go to F.linear as they are."""
    monkeypatch.setattr(gpt_model, "ROW_BLOCKS_MIN_WEIGHT", 0)
    layer = torch.nn.Linear(48, 101, bias=bias)
    with torch.no_grad(), matvecs_in_row_blocks(layer, blocks):
        for shape in [(48,), (1, 48), (1, 1, 48), (4, 48)]:
            x = torch.randn(shape)
            got = layer(x)
            assert got.shape == (*shape[:-1], 101)
            assert torch.allclose(got, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5)
    assert "forward" not in vars(layer)  # the class's forward again


@pytest.mark.parametrize("variant", ["gpt2", "untied", "all"])
def test_row_blocks_keep_logits_and_leave_the_model_as_it_was(monkeypatch, variant):
    """Split matrix-vector products change only the order of the sums: cached logits equal the full forward's,
    and the weights are untouched (views, never copies), after the context and after a stream closed early."""
    monkeypatch.setattr(gpt_model, "ROW_BLOCKS_MIN_WEIGHT", 0)
    model = tiny_gpt(**VARIANTS[variant])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seq = torch.randint(0, 101, (1, 40))
    full, _ = model(seq)
    with torch.no_grad(), matvecs_in_row_blocks(model, 3):
        assert "forward" in vars(model.lm_head) and "forward" in vars(model.transformer.h[0].mlp.c_fc)
        cache = KVCache(model.config, 1, seq.device, torch.float32)
        pieces = [model(seq[:, :20], cache=cache)[0]]
        pieces += [model(seq[:, i : i + 1], cache=cache)[0] for i in range(20, 40)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    stream = model.generate_stream(seq[:, :5], 10, temperature=0.0)
    next(stream)
    assert "forward" in vars(model.transformer.h[0].mlp.c_fc)
    stream.close()
    assert not any("forward" in vars(m) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in after.items())


def test_generation_in_row_blocks_equals_plain_generation_past_block_size(monkeypatch):
    """120 tokens with block_size 48: the cache is rebuilt twice, with split products as without."""
    model = tiny_gpt()
    prompt = torch.randint(0, 101, (1, 30), generator=torch.Generator().manual_seed(2))
    plain = model.generate(prompt, 120, temperature=0.0)
    monkeypatch.setattr(gpt_model, "ROW_BLOCKS_MIN_WEIGHT", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert torch.equal(model.generate(prompt, 120, temperature=0.0), plain)


def test_training_loss_at_init_is_log_vocab():
    model = tiny_gpt()
    x, y = torch.randint(0, 101, (2, 4, 48))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(101.0)).item()) < 0.3


def test_sample_filters():
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0, -1.0, 9.0]])
    assert sample_next(logits, temperature=0).item() == 5
    # The padding ids past vocab_limit are never drawn, even when they are the likeliest.
    assert sample_next(logits, temperature=0, vocab_limit=5).item() == 2
    draws = {sample_next(logits, 1.0, top_k=2, generator=generator).item() for _ in range(200)}
    assert draws == {2, 5}
    peaked = torch.tensor([[0.0, 0.0, 10.0, 9.0]])  # p ~ [0, 0, .73, .27]
    assert {sample_next(peaked, 1.0, top_p=0.5, generator=generator).item() for _ in range(100)} == {2}
    assert {sample_next(peaked, 1.0, top_p=0.9, generator=generator).item() for _ in range(300)} == {2, 3}


def test_cpu_generation_stays_fp32_unless_bf16_is_asked_for():
    from nanogpt.config import DeviceConfig
    from nanogpt.device import resolve
    from nanogpt.sampling import generation_precision

    assert generation_precision(DeviceConfig(device="cpu", dtype="auto")).dtype == torch.float32
    assert generation_precision(DeviceConfig(device="auto", dtype="auto")).dtype == (
        resolve(DeviceConfig(device="auto")).dtype if torch.cuda.is_available() else torch.float32
    )
    assert generation_precision(DeviceConfig(device="cpu", dtype="bfloat16")).dtype == torch.bfloat16


def test_flops_and_optimizer_groups():
    model = tiny_gpt()
    groups = model.optimizer_groups(0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    assert len(decayed) + len(groups[1]["params"]) == len(list(model.parameters()))
    cfg = model.config
    assert model.flops_per_token() == 6 * model.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def test_cpu_autocast_attention_matches_sdpa(monkeypatch):
    """Under bf16 autocast on a CPU, attention is written out as matmuls (model.causal_attention_matmuls): its output
    and gradients match PyTorch's attention in fp64 on the same bf16 inputs, to bf16's precision, and the model
    takes that path when training (its bf16 loss stays within bf16 rounding of the fp32 one)."""
    from nanogpt.model import causal_attention_matmuls

    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 40, 16).bfloat16().requires_grad_() for _ in range(3))
    grad = torch.randn(3, 4, 40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = causal_attention_matmuls(q, k, v, 0.0)
    y.float().backward(grad)
    ref_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*ref_inputs, is_causal=True)
    ref.backward(grad.double())
    assert y.dtype == torch.bfloat16 and (y.double() - ref).abs().max() < 2e-2
    for ours, theirs in zip((q, k, v), ref_inputs, strict=True):
        assert (ours.grad.double() - theirs.grad).abs().max() < 5e-2 * theirs.grad.abs().max()

    model, x = tiny_gpt(), torch.randint(0, 101, (2, 48))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss_bf16 = model(x, x)
        dropped = causal_attention_matmuls(q, k, v, 0.5)  # dropout in training runs and keeps the shape
    assert abs(loss_bf16.item() - model(x, x)[1].item()) < 0.02 and dropped.shape == q.shape

    # Without gradients (evaluation) the model takes PyTorch's fused kernel instead, whose bf16 forward is quicker.
    def refuse(*args):
        raise AssertionError("the written-out attention ran without gradients")

    with monkeypatch.context() as m:
        m.setattr(gpt_model, "causal_attention_matmuls", refuse)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss_eval = model(x, x)
    assert abs(loss_eval.item() - loss_bf16.item()) < 0.02
    # ...except with dropout (a no-grad forward in training mode), which those kernels do not have
    dropping = GPT(dataclasses.replace(model.config, dropout=0.5)).train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(dropping(x, x)[1])
