"""Continue a nanoGPT run here: its ckpt.pt written as the first checkpoint of a new run dir of ours (weights in
safetensors, its AdamW moments and step counts as our trainer state, its iter_num and best_val_loss), so that our
ordinary resume takes it from there. The run dir's info.json records the ckpt.pt it came from, with its sha256.

nanoGPT's AdamW has two groups, the parameters of 2 or more dimensions and then the rest, each in the order of
the model's named_parameters(); our GPT has the same names in the same order and splits its groups the same way
(GPT.optimizer_groups), so the saved state maps over index by index."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from nanogpt import checkpoint
from nanogpt.config import RunConfig
from nanogpt.errors import UserError
from nanogpt.from_nanogpt.checkpoint import NanoGPTCheckpoint, load, tokenizer_of

log = logging.getLogger("nanogpt")


def start_run(path: str, run_dir: str, cfg: RunConfig) -> str:
    """Write nanoGPT's checkpoint `path` into `run_dir` as its latest checkpoint; returns that folder."""
    ckpt = load(path)
    model = ckpt.build(dropout=cfg.model.dropout)
    spec, vocab = tokenizer_of(ckpt)
    optimizer = _adamw_state(ckpt, model)
    torch.manual_seed(cfg.seed)  # nanoGPT keeps no RNG state: dropout draws start afresh, from our seed
    state = {
        "optimizers": [optimizer],
        "scaler": {},
        "rng": [{"cpu": torch.get_rng_state()}],
        "iter": ckpt.iter_num,
        "best_val_loss": ckpt.best_val_loss,
        "evaluated_at": ckpt.iter_num,  # nanoGPT evaluated just before it saved
    }
    from nanogpt.runs import file_sha256

    info = {
        "model": dataclasses.asdict(model.config),
        "tokenizer": spec,
        "data_vocab_size": vocab,
        "iter": ckpt.iter_num,
        "best_val_loss": ckpt.best_val_loss,
        "init_from": {"nanogpt": os.path.abspath(ckpt.path), "iter": ckpt.iter_num, "sha256": file_sha256(ckpt.path)},
    }
    folder = checkpoint.save(run_dir, model, state, info)
    log.info("resuming nanoGPT's %s at iter %d (best val loss %.4f) in %s", ckpt.path, ckpt.iter_num,
             ckpt.best_val_loss, run_dir)  # fmt: skip
    return folder


def _adamw_state(ckpt: NanoGPTCheckpoint, model: torch.nn.Module) -> dict[str, Any]:
    """nanoGPT's AdamW state dict, checked against our GPT's two groups (the hyperparameters come from the config)."""
    saved = ckpt.optimizer
    if not isinstance(saved, dict) or "state" not in saved or "param_groups" not in saved:
        raise UserError(f"{ckpt.path} holds no optimizer state: finetune from it with init_from= instead of resuming")
    ours = model.optimizer_groups(0.0)
    sizes = [len(g["params"]) for g in saved["param_groups"]]
    if sizes != [len(g["params"]) for g in ours]:
        raise UserError(
            f"{ckpt.path}'s optimizer has parameter groups of {sizes} tensors, not nanoGPT's AdamW over this "
            "model: finetune from it with init_from= instead of resuming"
        )
    flat = [p for g in ours for p in g["params"]]
    for i, s in saved["state"].items():
        if s["exp_avg"].shape != flat[i].shape:
            raise UserError(f"{ckpt.path}: optimizer state {i} does not fit parameter {i}; the checkpoint is damaged")
    return saved
