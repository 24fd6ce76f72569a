"""Muon with its Newton-Schulz iterations batched over the matrices of one shape.

torch.optim.Muon orthogonalises one matrix at a time: ~25 small ops per matrix, 16 matrices in the CPU presets'
4 blocks. The blocks' matrices come in four shapes, so the same iterations run here as batched matmuls over a
stack of each shape: the same arithmetic, in the same precision (checked bit for bit against torch.optim.Muon in
tests/test_modern.py), a quarter of the ops. The state (a momentum buffer per matrix) and the hyperparameters are
torch.optim.Muon's, so checkpoints are interchangeable.

The iterations run in bf16 as torch's do where bf16 matmuls are native (GPUs, CPUs with bf16 dot products), and
in fp32 on other CPUs, where bf16 would be emulated, slower than fp32 (`ns_dtype`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


class BatchedMuon(torch.optim.Muon):
    def __init__(self, params, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype  # not a hyperparameter: kept out of param_groups and so out of checkpoints

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[tuple[int, ...], list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse or p.grad.ndim != 2 or torch.is_complex(p):
                        raise ValueError("Muon takes dense, real 2-D matrices only")
                    by_shape[tuple(p.shape)].append(p)
            for params in by_shape.values():
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        """One Muon step for matrices of one shape: Nesterov momentum, then the update orthogonalised."""
        grads = [p.grad for p in params]
        bufs = [self._buffer(p) for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
        updates = torch._foreach_lerp(grads, bufs, group["momentum"]) if group["nesterov"] else bufs
        ortho = orthogonalise(
            torch.stack(updates), group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype
        )
        rows, cols = params[0].shape
        lr = group["lr"]
        if group["adjust_lr_fn"] in (None, "original"):  # torch.optim.Muon's two rules
            scaled_lr = lr * math.sqrt(max(1, rows / cols))
        elif group["adjust_lr_fn"] == "match_rms_adamw":
            scaled_lr = lr * 0.2 * math.sqrt(max(rows, cols))
        else:
            scaled_lr = lr
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_add_(params, list(ortho.unbind(0)), alpha=-scaled_lr)

    def _buffer(self, p: torch.Tensor) -> torch.Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        return state["momentum_buffer"]


def orthogonalise(
    g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Newton-Schulz iterations towards the orthogonal factor of each matrix of the stack `g` (n, rows, cols): the
    quintic of Keller Jordan's Muon, which torch.optim.Muon runs one matrix at a time."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the wide side: its Gram matrix is the smaller one
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x
