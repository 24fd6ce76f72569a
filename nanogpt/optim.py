"""Optimizers and the learning-rate schedule.

`build` returns a list of optimizers: AdamW alone, or AdamW and Muon (`optim=muon`: Muon for the hidden
matrices, AdamW for the rest). Every param group records its peak lr as `initial_lr`; the schedule scales all
of them by the same factor each step.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from nanogpt.config import OptimConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.muon import BatchedMuon

log = logging.getLogger("nanogpt")


def build(model: GPT, o: OptimConfig, device_type: str) -> list[torch.optim.Optimizer]:
    """`optim.name=adamw`: one AdamW. `muon`: [AdamW, Muon], Muon holding the blocks' 2-D matrices."""
    fused = o.fused if o.fused is not None else device_type in ("cuda", "cpu")
    groups = model.optimizer_groups(o.weight_decay)
    hidden: list[torch.nn.Parameter] = []
    if o.name == "muon":
        # Muon orthogonalises each update matrix: every direction of a hidden layer moves at the same rate,
        # instead of the few that dominate the gradient. That suits the matmuls inside the blocks. Embeddings
        # are lookups (a row per token, not a linear map) and the head's scale matters per token, so those
        # and the 1-D gains and biases stay with AdamW (Keller Jordan, "Muon", 2024).
        hidden = [p for p in model.transformer.h.parameters() if p.dim() == 2 and p.requires_grad]
        taken = {id(p) for p in hidden}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in taken]} for g in groups]
        groups = [g for g in groups if g["params"]]
    adamw = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=fused)
    optimizers: list[torch.optim.Optimizer] = [adamw]
    if hidden:
        muon = BatchedMuon(
            hidden,
            ns_dtype=newton_schulz_dtype(device_type),
            lr=o.muon_lr,
            weight_decay=o.muon_weight_decay,
            momentum=o.muon_momentum,
            nesterov=True,
            ns_steps=o.muon_ns_steps,
            adjust_lr_fn="original",
        )
        optimizers.append(muon)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    return optimizers


def newton_schulz_dtype(device_type: str) -> torch.dtype:
    """bf16 where its matmuls are native (GPUs, Macs' MPS, CPUs with bf16 dot products), fp32 on other CPUs."""
    from nanogpt.device import cpu_trains_faster_in_bf16

    return torch.bfloat16 if device_type != "cpu" or cpu_trains_faster_in_bf16() else torch.float32


def load_states(optimizers: list[torch.optim.Optimizer], states: list[dict], model: torch.nn.Module) -> None:
    """Restore optimizer moments and step counts from a checkpoint, keeping the hyperparameters (lr, betas,
    weight decay...) of the current config: a resumed run may change them, e.g. `resume=<dir> optim.lr=1e-4`."""
    from nanogpt import distributed

    saved_sharded, sharded = distributed.is_gathered_optim_state(states), distributed.is_sharded(model)
    if saved_sharded != sharded:
        raise UserError(
            f"the checkpoint was written {'with' if saved_sharded else 'without'} FSDP: resume it "
            f"{'with train.parallel=fsdp on several processes' if saved_sharded else 'without train.parallel=fsdp'}"
        )
    if not sharded and len(states) != len(optimizers):
        raise UserError(
            f"the checkpoint holds {len(states)} optimizer state(s) but optim.name needs {len(optimizers)}: "
            "resume with the optimizer the run was trained with"
        )
    # The configured settings go into the saved groups BEFORE loading: load_state_dict takes the groups' settings
    # from what it loads and places state by them (a fused AdamW's step counters on the parameters' device, where
    # a checkpoint of a non-fused one, from a CPU or a Mac, keeps them on the CPU).
    if sharded:
        (opt,) = optimizers  # FSDP runs have one optimizer (validate refuses Muon with FSDP)
        whole = _configured(states[0][distributed.GATHERED_OPTIM_KEY], opt)
        distributed.load_sharded_optimizer_state(model, optimizers, [{distributed.GATHERED_OPTIM_KEY: whole}])
    else:
        for opt, state in zip(optimizers, states, strict=True):
            opt.load_state_dict(_configured(state, opt))


def _configured(state: dict, opt: torch.optim.Optimizer) -> dict:
    """`state` (an optimizer state dict) with the settings of `opt`'s param groups instead of the saved ones."""
    if len(state["param_groups"]) != len(opt.param_groups):
        raise UserError(
            f"the checkpoint's optimizer has {len(state['param_groups'])} parameter groups, this run's "
            f"{len(opt.param_groups)}: resume with the optimizer the run was trained with"
        )
    groups = [
        {**{k: v for k, v in now.items() if k != "params"}, "params": saved["params"]}
        for saved, now in zip(state["param_groups"], opt.param_groups, strict=True)
    ]
    return {**state, "param_groups": groups}


def fit_schedule(o: OptimConfig, max_iters: int, eval_only: bool = False) -> OptimConfig:
    """The schedule fitted to a run shorter than its warmup (a quick `train.max_iters=20` on a long preset): the
    warmup, and the decay likewise, are shortened to the run with a warning instead of being refused. A decay
    longer than a run that outlasts its warmup is left alone: a run stopped early and resumed with a larger
    train.max_iters must follow the schedule it started on."""
    if eval_only or o.warmup_iters <= max_iters:
        return o
    decay_iters = o.lr_decay_iters if o.lr_decay_iters is None else min(o.lr_decay_iters, max_iters)
    log.warning(
        "optim.warmup_iters=%d is longer than the run: warming up over train.max_iters=%d instead%s",
        o.warmup_iters,
        max_iters,
        "" if decay_iters == o.lr_decay_iters else f" (and optim.lr_decay_iters={o.lr_decay_iters} likewise)",
    )
    return dataclasses.replace(o, warmup_iters=max_iters, lr_decay_iters=decay_iters)


def lr_factor(it: int, o: OptimConfig, max_iters: int) -> float:
    """The step's lr as a fraction of the peak: linear warmup, then cosine decay to min_lr / lr, then flat."""
    if it < o.warmup_iters:
        return (it + 1) / (o.warmup_iters + 1)
    floor = o.min_lr / o.lr if o.lr > 0 else 0.0
    if not o.decay_lr:
        return 1.0
    decay_iters = o.lr_decay_iters if o.lr_decay_iters is not None else max_iters
    if it >= decay_iters:
        return floor
    ratio = (it - o.warmup_iters) / (decay_iters - o.warmup_iters)
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1.0 - floor)


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
