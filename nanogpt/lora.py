"""LoRA (Hu et al. 2021) on our GPT through peft: low-rank adapters over frozen base weights.

`finetune=lora` adapts the linear layers named in `finetune.targets`: each one's output gains
(alpha / rank) * B @ A @ x, with A (rank x in) and B (out x rank, starting at zero) the only weights that train, so the
finetune starts as the base model and the optimizer holds state for the adapters alone. A LoRA run's checkpoints
hold only the adapters; their info.json's `finetune` record says how they were built and points at the base (a run's
checkpoint, or a pretrained model) with the sha256 of its weights, checked whenever the adapter is loaded. Loading
for sampling, evaluation or export merges the adapters into plain weights: the same function, a plain GPT.

peft (and the transformers it imports) is imported only here, only when called: it costs seconds.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch

from nanogpt import checkpoint
from nanogpt.config import FinetuneConfig, ModelConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT

ADAPTER = ".lora_"  # every adapter weight's name holds this (peft's lora_A / lora_B)


def peft_config(f: FinetuneConfig, fan_in_fan_out: bool = False):
    """peft's LoraConfig for `f`; `fan_in_fan_out` for layers that store (in, out) weights (Hugging Face's Conv1D)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise UserError("finetune=lora needs peft: pip install peft") from None
    return LoraConfig(
        r=f.rank,
        lora_alpha=f.alpha,
        lora_dropout=f.dropout,
        target_modules=list(f.targets),
        bias="none",
        fan_in_fan_out=fan_in_fan_out,
    )


def attach(model: GPT, f: FinetuneConfig) -> GPT:
    """`model` with adapters on `f.targets`, everything else frozen (in place; the GPT stays a GPT)."""
    from peft import inject_adapter_in_model

    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in f.targets if t not in linear]
    if missing:
        raise UserError(
            f"finetune.targets has {missing[0]!r}, which this model has no linear layer of: "
            f"use some of {', '.join(sorted(linear))}"
        )
    if "lm_head" in f.targets and model.config.tie_embeddings:
        raise UserError(
            "finetune.targets has lm_head, which shares its weights with the token embedding "
            "(model.tie_embeddings=true): a merged adapter would change both; leave lm_head out"
        )
    cfg = peft_config(f)
    model = inject_adapter_in_model(cfg, model)
    for name, p in model.named_parameters():  # peft freezes the rest; say it here, where a reader looks
        p.requires_grad_(ADAPTER in name)
    return model


def is_adapted(model: torch.nn.Module) -> bool:
    return any(ADAPTER in name for name, _ in model.named_parameters())


def adapter_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone, under the names they have in the adapted GPT: what a LoRA checkpoint holds."""
    return {k: v.detach() for k, v in model.state_dict().items() if ADAPTER in k}


def weights_sha256(model: torch.nn.Module) -> str:
    """A digest of a model's weights as loaded (names, shapes, fp32 values): a pretrained base has no file of ours
    to hash, and Hugging Face's cache may hold it in any format."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        digest.update(f"{name}{tuple(value.shape)}".encode())
        digest.update(value.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def record(f: FinetuneConfig, init_from: Any, base: GPT) -> dict[str, Any]:
    """What a LoRA run's checkpoints record besides the adapters: the settings, and a pointer to the base with the
    sha256 of its weights. `init_from` is the run's: a run dir's origin (its checkpoint and file sha256), else a
    pretrained model's name or folder."""
    if isinstance(init_from, dict) and "checkpoint" not in init_from:
        raise UserError(
            "finetune=lora over a nanoGPT checkpoint is not supported: finetune it fully once (finetune=full), "
            "then put LoRA over that run (init_from=<its run dir>)"
        )
    if isinstance(init_from, dict):
        pointer = {k: init_from[k] for k in ("run", "checkpoint", "iter", "sha256")}
    else:
        pointer = {"pretrained": init_from, "weights_sha256": weights_sha256(base)}
    settings = {"rank": f.rank, "alpha": f.alpha, "dropout": f.dropout, "targets": list(f.targets)}
    return {"method": "lora", **settings, "base": pointer}


def check_resumed(f: FinetuneConfig, info: dict[str, Any], ckpt: str) -> None:
    """A LoRA run resumes with the adapters it has: a setting changed on the command line is refused, not dropped."""
    rec = info["finetune"]
    for key in ("rank", "alpha", "dropout", "targets"):
        if getattr(f, key) != rec[key]:
            raise UserError(
                f"finetune.{key}={getattr(f, key)} but checkpoint {ckpt} holds adapters with finetune.{key}="
                f"{rec[key]}: resume without changing it, or start a new finetune"
            )


def holds_adapter(info: dict[str, Any]) -> bool:
    return info.get("finetune", {}).get("method") == "lora"


def load_adapted(info: dict[str, Any], ckpt: str, dropout: float = 0.0) -> GPT:
    """The base a LoRA checkpoint points at (its sha256 checked) with the checkpoint's adapters attached."""
    from safetensors.torch import load_file

    rec = info["finetune"]
    shape = ModelConfig(**{**info["model"], "dropout": dropout})
    settings = FinetuneConfig("lora", rec["rank"], rec["alpha"], rec["dropout"], rec["targets"])
    model = attach(_load_base(rec["base"], shape, ckpt), settings)
    saved = load_file(os.path.join(ckpt, checkpoint.WEIGHTS))
    expected = adapter_weights(model)
    if saved.keys() != expected.keys() or any(saved[k].shape != expected[k].shape for k in saved):
        raise UserError(
            f"checkpoint {ckpt} does not hold the adapters its info.json describes "
            f"(rank {rec['rank']}, targets {rec['targets']}): use another checkpoint"
        )
    model.load_state_dict(saved, strict=False)
    return model


def _load_base(pointer: dict[str, Any], shape: ModelConfig, ckpt: str) -> GPT:
    """The frozen base, refused in one line when its weights are no longer those the adapter was trained over."""
    if "pretrained" in pointer:
        from nanogpt.pretrained import from_huggingface

        base = from_huggingface(pointer["pretrained"], dropout=shape.dropout, block_size=shape.block_size)
        found, wanted, where = weights_sha256(base), pointer["weights_sha256"], pointer["pretrained"]
    else:
        where = pointer["checkpoint"]
        weights = os.path.join(where, checkpoint.WEIGHTS)
        if not os.path.isfile(weights):
            raise UserError(
                f"the adapter in {ckpt} was trained over {where}, which no longer exists: restore that checkpoint"
            )
        found, wanted = checkpoint.file_sha256(weights), pointer["sha256"]
        base_info = checkpoint.load_info(where)
        base = GPT(ModelConfig(**{**base_info["model"], "dropout": shape.dropout}))
        checkpoint.load_weights(base, where)
        if shape.block_size < base.config.block_size:
            base.crop_block_size(shape.block_size)
    if found != wanted:
        raise UserError(
            f"the adapter in {ckpt} was trained over {where} with weights sha256 {wanted[:12]}..., but they are now "
            f"{found[:12]}...: restore the base it was trained over, or finetune again"
        )
    return base


@torch.no_grad()
def merge(model: GPT) -> GPT:
    """The adapters added into their base weights and removed: a plain GPT computing the same function."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model
