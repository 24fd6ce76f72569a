"""Compute budgets and the depth dial: what a run's config asks for -> the shape and length it trains.

    model.depth=<d>           n_layer = d, n_embd = d x model.aspect_ratio, n_head = n_embd / model.head_dim
    train.flops_budget=<C>    max_iters = round(C / (FLOPs per token x tokens per step))
    train.tokens_budget=<D>   max_iters = round(D / tokens per step)

FLOPs per token are the model's own count (GPT.flops_per_token: 6 per parameter for the forward and backward
passes, plus attention), the same the loop's MFU uses, so what a budget buys and what the run reports agree.
Rounding to whole steps spends each budget to within half a step. The optimizer schedule follows: a cosine
with optim.lr_decay_iters=null ends at the derived max_iters, and a warmup longer than the run is fitted to it
(optim.fit_schedule, as for any short run).

No Hydra; the derivation is pure. train.py calls `resolve` once the data set's vocabulary is known (it enters N
through the output head), logs the Plan and writes it into the run dir as plan.json; a resumed run derives the
same from its saved config.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

from nanogpt.config import DEFAULT_MAX_ITERS, ModelConfig, RunConfig
from nanogpt.errors import UserError

log = logging.getLogger("nanogpt")


@dataclass(frozen=True)
class Plan:
    """The shape and length a run trains, and what they cost (plan.json; the sweep report reads it)."""

    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int
    params: int  # N as the FLOPs count it: GPT.num_params(), without lookup tables (positions, an untied input)
    flops_per_token: float  # 6N + attention (GPT.flops_per_token)
    tokens_per_step: int  # batch_size x grad_accum x block_size
    max_iters: int
    tokens: int  # D = max_iters x tokens_per_step
    flops: float  # C = D x flops_per_token: what the run spends
    flops_budget: float | None
    tokens_budget: float | None
    depth: int | None


def depth_shape(depth: int, aspect_ratio: int, head_dim: int) -> tuple[int, int, int]:
    """(n_layer, n_head, n_embd) of `model.depth`: width grows with depth, heads keep their size. validate()
    has refused widths that are not a whole number of heads."""
    width = depth * aspect_ratio
    return depth, width // head_dim, width


def shaped(m: ModelConfig) -> ModelConfig:
    """The model config with `depth` turned into n_layer, n_head and n_embd (unchanged without a depth)."""
    if m.depth is None:
        return m
    n_layer, n_head, n_embd = depth_shape(m.depth, m.aspect_ratio, m.head_dim)
    return dataclasses.replace(m, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


def steps_for_budget(
    flops_per_token: float, tokens_per_step: int, flops_budget: float | None, tokens_budget: float | None
) -> int:
    """Optimizer steps that spend the budget to within half a step; a budget under one step is refused."""
    if flops_budget is not None:
        step, budget, what = flops_per_token * tokens_per_step, flops_budget, "train.flops_budget"
        cost = f"{step:.3g} FLOPs: {flops_per_token:.4g} FLOPs/token x {tokens_per_step} tokens"
    elif tokens_budget is not None:
        step, budget, what = tokens_per_step, tokens_budget, "train.tokens_budget"
        cost = f"{tokens_per_step} tokens"
    else:
        raise ValueError("no budget given")
    if budget < step:
        raise UserError(
            f"{what}={budget:g} is less than one optimizer step ({cost}): raise the budget, or make the model "
            "or the batch (train.batch_size, grad_accum, model.block_size) smaller"
        )
    return round(budget / step)


def resolve(cfg: RunConfig, data_vocab_size: int) -> tuple[RunConfig, Plan | None]:
    """The config with the depth's shape and the budget's max_iters filled in, and its Plan; no Plan for a
    pretrained model, whose shape comes from its checkpoint (validate() refuses depths and budgets there)."""
    t, o = cfg.train, cfg.optim
    model_cfg = shaped(cfg.model)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    if cfg.init_from != "scratch":
        return _with_length(cfg, t.max_iters if t.max_iters is not None else DEFAULT_MAX_ITERS), None

    vocab = model_cfg.vocab_size or -(-data_vocab_size // model_cfg.pad_vocab_multiple) * model_cfg.pad_vocab_multiple
    params, flops_per_token = count(dataclasses.replace(model_cfg, vocab_size=vocab))
    tokens_per_step = t.batch_size * t.grad_accum * model_cfg.block_size
    if t.flops_budget is not None or t.tokens_budget is not None:
        max_iters = steps_for_budget(flops_per_token, tokens_per_step, t.flops_budget, t.tokens_budget)
        if o.lr_decay_iters is not None and o.lr_decay_iters != max_iters:
            log.warning(
                "optim.lr_decay_iters=%d with a budget of %d steps: the cosine ends at %d, not with the run "
                "(optim.lr_decay_iters=null follows the budget)",
                o.lr_decay_iters,
                max_iters,
                o.lr_decay_iters,
            )
    else:
        max_iters = t.max_iters if t.max_iters is not None else DEFAULT_MAX_ITERS
    plan = Plan(
        n_layer=model_cfg.n_layer,
        n_head=model_cfg.n_head,
        n_embd=model_cfg.n_embd,
        vocab_size=vocab,
        params=params,
        flops_per_token=flops_per_token,
        tokens_per_step=tokens_per_step,
        max_iters=max_iters,
        tokens=max_iters * tokens_per_step,
        flops=max_iters * tokens_per_step * flops_per_token,
        flops_budget=t.flops_budget,
        tokens_budget=t.tokens_budget,
        depth=model_cfg.depth,
    )
    return _with_length(cfg, max_iters), plan


def _with_length(cfg: RunConfig, max_iters: int) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iters=max_iters))


def count(m: ModelConfig) -> tuple[int, float]:
    """(N, training FLOPs per token) of a model of this shape, from the model's own definitions, built on the
    meta device: no memory, no time."""
    import torch

    from nanogpt.model import GPT

    with torch.device("meta"):
        model = GPT(m)
    return model.num_params(), model.flops_per_token()


def describe(plan: Plan) -> str:
    """One log line: the shape, its cost per token, and what the budget buys."""
    shape = f"{plan.n_layer} layers x {plan.n_embd} wide, {plan.n_head} heads"
    if plan.depth is not None:
        shape = f"depth {plan.depth}: {shape}"
    budget = (
        f"flops_budget {plan.flops_budget:.3g} -> "
        if plan.flops_budget is not None
        else f"tokens_budget {plan.tokens_budget:.3g} -> "
        if plan.tokens_budget is not None
        else ""
    )
    return (
        f"{shape}; N = {plan.params:,} parameters, {plan.flops_per_token:.4g} FLOPs/token; {budget}"
        f"{plan.max_iters} steps x {plan.tokens_per_step} tokens = {plan.tokens:,} tokens, {plan.flops:.4g} FLOPs"
    )


def write_plan(run_dir: str, plan: Plan) -> None:
    from nanogpt.atomic import atomic_write

    atomic_write(os.path.join(run_dir, "plan.json"), (json.dumps(dataclasses.asdict(plan), indent=1) + "\n").encode())
