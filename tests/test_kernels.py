"""nanogpt.kernels against the plain references: attention against F.scaled_dot_product_attention in fp64 (forward
and backward, on every path `attend` chooses), ReLU² against autograd through F.relu(x) ** 2, the row blocks against
F.linear; and the decode layout chosen where it should be, leaving the model as it was."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from torch.nn import functional as F

from nanogpt import kernels
from nanogpt.config import SampleConfig
from nanogpt.kernels import attend, causal_attention_matmuls, decode_layout, matvecs_in_row_blocks, relu_squared
from nanogpt.model import GPT, KVCache
from tests.helpers import tiny_gpt


def _qkv(dtype: torch.dtype, T: int = 40, S: int | None = None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    shapes = [(3, 4, T, 16), (3, 4, S or T, 16), (3, 4, S or T, 16)]
    return [torch.randn(s).to(dtype).requires_grad_() for s in shapes]


def _reference(q, k, v, grad, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """PyTorch's attention in fp64 on the same inputs: its output and the inputs' gradients."""
    inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*inputs, **kwargs)
    out.backward(grad.double())
    return out, [t.grad for t in inputs]


def _close(ours: torch.Tensor, ref: torch.Tensor, rel: float) -> bool:
    return (ours.double() - ref).abs().max().item() <= rel * ref.abs().max().item()


@pytest.mark.parametrize("path", ["fp32", "bf16_training", "bf16_evaluation", "cache_mask"])
def test_attend_equals_sdpa_on_each_path(monkeypatch, path):
    """fp32 goes to PyTorch as it is; under CPU bf16 autocast training is written out and evaluation takes the fused
    kernel; a KV cache's mask goes to PyTorch under autocast too. Each matches fp64 attention to its precision."""
    written_out = []
    monkeypatch.setattr(
        kernels, "causal_attention_matmuls", lambda *a: written_out.append(1) or causal_attention_matmuls(*a)
    )
    bf16 = path != "fp32"
    dtype = torch.bfloat16 if bf16 else torch.float32
    q, k, v = _qkv(dtype, T=7, S=19) if path == "cache_mask" else _qkv(dtype)
    kwargs: dict = {"is_causal": True}
    if path == "cache_mask":  # 7 new queries after 12 cached keys
        kwargs = {"attn_mask": torch.ones(7, 19, dtype=torch.bool).tril(diagonal=12)}
    grad = torch.randn(q.shape)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(path != "bf16_evaluation"):
        y = attend(q, k, v, mask=kwargs.get("attn_mask"), is_causal="is_causal" in kwargs)
    ref, ref_grads = _reference(q, k, v, grad, **kwargs)
    assert y.dtype == q.dtype and _close(y, ref, 2e-2 if bf16 else 1e-5)
    assert written_out == ([1] if path == "bf16_training" else [])
    if path == "bf16_evaluation":
        return
    y.float().backward(grad)
    for ours, theirs in zip((q.grad, k.grad, v.grad), ref_grads, strict=True):
        assert _close(ours, theirs, 5e-2 if bf16 else 1e-5)


def test_attend_with_dropout_is_written_out_without_gradients_too(monkeypatch):
    """The fused CPU kernels have no dropout: a no-grad forward in training mode is written out, keeps the shape,
    and drops something."""
    calls = []
    monkeypatch.setattr(
        kernels, "causal_attention_matmuls", lambda *a: calls.append(a[3]) or causal_attention_matmuls(*a)
    )
    q, k, v = (t.detach() for t in _qkv(torch.bfloat16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = attend(q, k, v)
        dropped = attend(q, k, v, dropout=0.5)
    assert calls == [0.5] and dropped.shape == q.shape and not torch.equal(dropped, plain)


def test_model_losses_through_each_attention_path():
    """The model's bf16 training loss (written out) and evaluation loss (fused) stay within bf16 rounding of fp32's."""
    model, x = tiny_gpt(), torch.randint(0, 101, (2, 48))
    fp32 = model(x, x)[1].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        training = model(x, x)[1].item()
        with torch.no_grad():
            evaluation = model(x, x)[1].item()
    assert abs(training - fp32) < 0.02 and abs(evaluation - fp32) < 0.02
    dropping = GPT(dataclasses.replace(model.config, dropout=0.5)).train()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(dropping(x, x)[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_squared_equals_autograd_through_relu_then_square(dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 33, dtype=dtype)
    x[0, :3] = 0.0  # relu's kink: both give gradient 0 there
    ours_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn_like(x)
    ours, ref = relu_squared(ours_in), F.relu(ref_in) ** 2
    ours.backward(grad)
    ref.backward(grad)
    assert torch.equal(ours, ref) and torch.equal(ours_in.grad, ref_in.grad)
    assert torch.autograd.gradcheck(relu_squared, (torch.randn(4, 7, dtype=torch.float64).requires_grad_(),))


@pytest.mark.parametrize("blocks", [2, 3, 7])  # 3 and 7 leave rows over: the remainder's own product
@pytest.mark.parametrize("bias", [True, False])
def test_one_row_in_row_blocks_equals_linear(monkeypatch, blocks, bias):
    """Each shape a one-row input comes in, against F.linear; other inputs go to F.linear as they are."""
    monkeypatch.setattr(kernels, "ROW_BLOCKS_MIN_WEIGHT", 0)
    layer = torch.nn.Linear(48, 101, bias=bias)
    with torch.no_grad(), matvecs_in_row_blocks(layer, blocks):
        for shape in [(48,), (1, 48), (1, 1, 48), (4, 48)]:
            x = torch.randn(shape)
            got = layer(x)
            assert got.shape == (*shape[:-1], 101)
            assert torch.allclose(got, F.linear(x, layer.weight, layer.bias), atol=1e-5)
    assert "forward" not in vars(layer)  # the class's forward again


def test_decode_layout_only_for_fp32_on_several_cpu_threads(monkeypatch):
    monkeypatch.setattr(kernels, "ROW_BLOCKS_MIN_WEIGHT", 0)
    model = tiny_gpt()

    def splits() -> bool:
        with decode_layout(model):
            return "forward" in vars(model.lm_head)

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert splits()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast computes in bf16: nothing to split
        assert not splits()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert not splits()


@pytest.mark.parametrize("variant", [{}, dict(tie_embeddings=False), dict(rotary=True, activation="relu2")])
def test_row_blocks_keep_logits_and_leave_the_model_as_it_was(monkeypatch, variant):
    """Split matrix-vector products change only the order of the sums: cached logits equal the full forward's,
    and the weights are untouched (views, never copies), after the context even with a stream left open."""
    monkeypatch.setattr(kernels, "ROW_BLOCKS_MIN_WEIGHT", 0)
    model = tiny_gpt(**variant)
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
    with decode_layout(model):
        stream = model.generate_stream(seq[:, :5], 10, temperature=0.0)
        next(stream)
    assert not any("forward" in vars(m) for m in model.modules())
    stream.close()
    after = model.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in after.items())


def test_sample_decodes_in_row_blocks_with_the_same_text(monkeypatch):
    """sample() decodes inside the layout (seen from a row-split layer at each step), and greedy and seeded
    samples are the same text as without it, past block_size (the cache rebuilt twice)."""
    from nanogpt import sampling
    from nanogpt.tokenizer import CharTokenizer

    model = tiny_gpt()
    chars = [chr(c) for c in range(32, 32 + 101)]
    monkeypatch.setattr(sampling, "load_for_sampling", lambda cfg: (model, CharTokenizer(chars), 101))
    monkeypatch.setattr(kernels, "ROW_BLOCKS_MIN_WEIGHT", 0)
    split_steps = []
    forward = GPT.forward
    monkeypatch.setattr(
        GPT, "forward", lambda m, *a, **k: split_steps.append("forward" in vars(m.lm_head)) or forward(m, *a, **k)
    )

    def texts(threads: int) -> list[str]:
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        common = dict(start="abc", max_new_tokens=120, num_samples=2)
        cfg = SampleConfig(**common, temperature=0.0)
        seeded = SampleConfig(**common, temperature=1.0, top_k=20, seed=3)
        cfg.device.device = seeded.device.device = "cpu"
        return sampling.sample(cfg, io.StringIO()) + sampling.sample(seeded, io.StringIO())

    plain = texts(1)
    assert not any(split_steps)
    split_steps.clear()
    assert texts(2) == plain and all(split_steps)
