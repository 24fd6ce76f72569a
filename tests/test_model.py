"""The GPT against Hugging Face's GPT-2, the KV cache against full recompute (GPT-2's model, without biases, and
with each modern option), and the sampling filters. Its kernels against their references: tests/test_kernels.py."""

from __future__ import annotations

import pytest
import torch

from nanogpt.config import ModelConfig
from nanogpt.model import GPT, LAST_POSITION, KVCache, sample_next
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


def test_logits_at_computes_the_output_layer_at_those_positions_alone():
    model = tiny_gpt()
    seq = torch.randint(0, 101, (3, 20))
    full, _ = model(seq)
    last, _ = model(seq, logits_at=LAST_POSITION)
    rows, positions = torch.tensor([0, 2, 2]), torch.tensor([5, 0, 19])
    picked, _ = model(seq, logits_at=(rows, positions))
    assert last.shape == (3, 1, 101) and torch.allclose(last, full[:, [-1]], atol=1e-6)
    assert picked.shape == (3, 101) and torch.allclose(picked, full[rows, positions], atol=1e-6)


def test_generation_past_block_size_and_long_prompts():
    model = tiny_gpt()
    prompt = torch.randint(0, 101, (1, 100))  # longer than block_size 48: cropped
    out = model.generate(prompt, 120, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 220)
    assert torch.equal(out[:, :100], prompt)


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
