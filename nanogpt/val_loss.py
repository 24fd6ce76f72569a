"""The loss estimate at each evaluation: the mean loss over the same batches of each split, shared out across
processes, stopping between forwards when a stop is asked (train.py turns that into a saved, resumable stop)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nanogpt import device as devices
from nanogpt import distributed
from nanogpt.data.batches import Batches
from nanogpt.data.token_files import SPLITS

# Evaluation stacks its batches up to this many tokens per forward: a small model's forward is mostly per-op
# overhead (docs/BENCHMARKS.md, Evaluation), a large one's batches are already past it and stay one per forward.
EVAL_TOKENS_PER_FORWARD = 4096


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    batches: Batches,
    eval_iters: int,
    precision: devices.Precision,
    dist: distributed.Dist,
    check_stop: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Mean loss over the same `eval_iters` batches of each split, shared out across processes. Every process runs
    the same number of forwards (FSDP's forward is a collective): where `eval_iters` does not divide by the number
    of processes, the last ones run a batch again with its targets masked out (-1), and leave it out of the mean.
    `check_stop` is called before each forward, on every process alike; what it raises ends the estimate."""
    model.eval()
    try:
        return {split: _split_loss(model, batches, split, eval_iters, precision, dist, check_stop) for split in SPLITS}
    finally:
        model.train()


def _split_loss(
    model: torch.nn.Module,
    batches: Batches,
    split: str,
    eval_iters: int,
    precision: devices.Precision,
    dist: distributed.Dist,
    check_stop: Callable[[], None] | None,
) -> float:
    per_forward = max(1, EVAL_TOKENS_PER_FORWARD // (batches.batch_size * batches.block_size))
    total = torch.zeros((), device=precision.device)
    mine = list(range(dist.rank, math.ceil(eval_iters / dist.world_size) * dist.world_size, dist.world_size))
    for group in (mine[i : i + per_forward] for i in range(0, len(mine), per_forward)):
        if check_stop is not None:
            check_stop()
        pairs = [batches.eval(split, min(k, eval_iters - 1)) for k in group]
        counted = [k < eval_iters for k in group]
        x = torch.cat([x for x, _ in pairs])
        y = torch.cat([y if keep else torch.full_like(y, -1) for (_, y), keep in zip(pairs, counted, strict=True)])
        with precision.autocast():
            _, loss = model(x, y)
        if any(counted):  # batches of equal size: the mean over their tokens is the mean of their means
            total += loss.float() * sum(counted)
    return (distributed.all_reduce_mean(total, dist) * dist.world_size / eval_iters).item()
