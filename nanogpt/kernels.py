"""Speed paths the model calls but need not know about: attention's kernel choice, ReLU²'s lean backward, the
dtype a model computes in, and the decode layout (one-row products split over the CPU's threads).

Each computes what its plain reference computes (`F.scaled_dot_product_attention`, `F.relu(x) ** 2` through
autograd, `F.linear`), to rounding: tests/test_kernels.py holds them to it. What each one buys, and on which CPU, is
in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = True,
    dropout: float = 0.0,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over (B, n_head, T, head_dim), as `F.scaled_dot_product_attention`
    takes them, in the kernel that is quickest where it runs.

    Eager causal attention on a CPU under bf16 autocast avoids PyTorch's choices: its fused kernel's bf16 backward
    is slow and has no dropout, and its plain path scans every row for a full mask. Training goes written out
    (`causal_attention_matmuls`); evaluation keeps the fused kernel, whose bf16 forward is quick. Compiled, Inductor
    fuses the plain path itself, and the autocast switch inside the written-out form would keep AOT autograd's cache
    from storing the graph. Everything else (GPUs, fp32, a KV cache's mask) is PyTorch's own choice."""
    eager_cpu_bf16 = q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
    if mask is None and is_causal and eager_cpu_bf16:
        if torch.is_grad_enabled() or dropout:
            return causal_attention_matmuls(q, k, v, dropout)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)


def causal_attention_matmuls(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float) -> torch.Tensor:
    """Causal attention written out, for CPUs under bf16 autocast. Precision as in flash attention on a GPU: scores
    and softmax in fp32, the probabilities rounded to bf16 for their matmul with v."""
    B, H, T, D = q.shape
    future = torch.full((T, T), float("-inf"), device=q.device).triu(1)
    with torch.autocast(q.device.type, enabled=False):
        q32, k32 = q.float().reshape(B * H, T, D), k.float().reshape(B * H, T, D)
        # mask + scale * q k^T in one kernel, forward and backward, rather than three
        scores = torch.baddbmm(future.expand(B * H, T, T), q32, k32.transpose(1, 2), alpha=1.0 / math.sqrt(D))
        att = scores.softmax(dim=-1)
        if dropout:
            att = F.dropout(att, dropout)
        return att.type_as(v).view(B, H, T, T) @ v


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """relu(x)², with a backward that saves one tensor and runs one kernel."""
    return _ReLUSquared.apply(x)


class _ReLUSquared(torch.autograd.Function):
    """The gradient of relu(x)² is 2 relu(x): keeping relu(x) makes the backward one multiply, where autograd
    through relu then square would save both tensors and run three elementwise kernels."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return grad * (2 * r)


# Below this many elements a weight is quicker to multiply whole, on one core (its reads hit the caches).
ROW_BLOCKS_MIN_WEIGHT = 2**17


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype `model` computes in here: autocast's (fp16 or bf16 over fp32 weights) where it is on for the
    model's device, else its weights'."""
    weight = next(model.parameters())
    kind = weight.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


def decode_layout(model: nn.Module) -> contextlib.AbstractContextManager:
    """The context to decode `model` in, one token at a time, entered inside any autocast: on a CPU computing in
    fp32 with several threads, `matvecs_in_row_blocks` over the threads; elsewhere nothing."""
    threads = torch.get_num_threads()
    if next(model.parameters()).device.type == "cpu" and compute_dtype(model) == torch.float32 and threads > 1:
        return matvecs_in_row_blocks(model, threads)
    return contextlib.nullcontext()


@contextlib.contextmanager
def matvecs_in_row_blocks(model: nn.Module, blocks: int) -> Iterator[None]:
    """While in this context, `model`'s large fp32 Linear layers multiply a single row (batch-1 decoding on a CPU)
    as a batched product over `blocks` row blocks of their weight (views: no copy). Such a step reads every weight
    once from memory, and MKL runs a one-row product on one core whatever the threads; split into one block per
    thread, the blocks are read in parallel. Other inputs, and the model itself, are left as they are."""
    layers = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear)
        and m.weight.dtype == torch.float32
        and m.weight.is_contiguous()
        and m.weight.numel() >= ROW_BLOCKS_MIN_WEIGHT
    ]
    try:
        for m in layers:
            m.forward = _one_row_in_blocks(m, blocks)
        yield
    finally:
        for m in layers:
            del m.forward  # the class's forward again


def _one_row_in_blocks(module: nn.Linear, blocks: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module`'s forward, with an input of one row multiplied by `blocks` row blocks of the weight at once."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        w, bias = module.weight, module.bias
        n_out, n_in = w.shape
        if x.numel() != n_in:  # more than one row (a prompt): a matrix product, which MKL parallelises itself
            return F.linear(x, w, bias)
        rows = n_out // blocks
        split = rows * blocks
        y = x.new_empty(n_out)
        x_rows = x.reshape(1, 1, n_in).expand(blocks, 1, n_in)
        torch.bmm(x_rows, w[:split].view(blocks, rows, n_in).transpose(1, 2), out=y[:split].view(blocks, 1, rows))
        if split < n_out:
            torch.mv(w[split:], x.reshape(n_in), out=y[split:])
        if bias is not None:
            y += bias
        return y.view(*x.shape[:-1], n_out)

    return forward
