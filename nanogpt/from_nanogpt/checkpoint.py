"""A nanoGPT `ckpt.pt` as one of our models: its shape from `model_args`, its weights mapped onto our GPT, its
tokenizer from its data set's meta.pkl (character-level) or GPT-2's BPE, as nanoGPT's own sample.py decides.

nanoGPT's train.py saves `{'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config'}`: tensors,
dicts, numbers and strings, which `torch.load(weights_only=True)` reads without unpickling any other object."""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
from dataclasses import dataclass
from typing import Any

import torch

from nanogpt.config import ModelConfig
from nanogpt.errors import UserError
from nanogpt.from_nanogpt import checkpoint_file, meta
from nanogpt.model import GPT
from nanogpt.runs import LoadedRun

log = logging.getLogger("nanogpt")

KEYS = ("model", "model_args")  # what every nanoGPT checkpoint has; the rest may be missing in old ones
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
COMPILED = "_orig_mod."  # torch.compile's wrapper: nanoGPT saves the compiled module's state dict
GPT2_VOCAB = 50257


@dataclass
class NanoGPTCheckpoint:
    path: str  # the ckpt.pt file
    model: ModelConfig  # its shape, in our terms
    weights: dict[str, torch.Tensor]  # its state dict under our GPT's key names
    optimizer: dict[str, Any] | None  # its AdamW state dict, as torch saved it
    iter_num: int
    best_val_loss: float
    config: dict[str, Any]  # train.py's settings, as nanoGPT logged them

    def build(self, dropout: float | None = None) -> GPT:
        """Our GPT holding its weights (in train mode as built; fp32 on the CPU)."""
        cfg = self.model if dropout is None else dataclasses.replace(self.model, dropout=dropout)
        model = GPT(cfg)
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as e:
            raise UserError(f"{self.path} does not fit nanoGPT's GPT layout ({_first_line(e)})") from None
        return model


def load(path: str) -> NanoGPTCheckpoint:
    """The checkpoint `path` names (ckpt.pt or its out_dir), loaded safely and checked."""
    file = checkpoint_file(path)
    if file is None:
        raise UserError(f"{path} is not a nanoGPT checkpoint: give its ckpt.pt, or the out_dir holding one")
    raw = _torch_load(file)
    if not isinstance(raw, dict) or any(k not in raw for k in KEYS) or not isinstance(raw["model_args"], dict):
        raise UserError(
            f"{file} is not a nanoGPT checkpoint (it has no {' and '.join(KEYS)}): give a ckpt.pt that nanoGPT's "
            "train.py wrote, or a run dir of ours"
        )
    args = raw["model_args"]
    missing = [k for k in SHAPE if k not in args]
    if missing:
        raise UserError(f"{file}: model_args lacks {', '.join(missing)}; the checkpoint is damaged")
    weights = _our_keys(raw["model"])
    tied = "lm_head.weight" not in weights or torch.equal(weights["lm_head.weight"], weights["transformer.wte.weight"])
    model = ModelConfig(
        **{k: args[k] for k in SHAPE},
        dropout=float(args.get("dropout", 0.0)),
        activation="gelu_exact",  # nanoGPT's MLP is nn.GELU(): the erf form
        tie_embeddings=tied,
    )
    loss = raw.get("best_val_loss", float("inf"))
    return NanoGPTCheckpoint(
        file, model, weights, raw.get("optimizer"), int(raw.get("iter_num", 0)), float(loss), raw.get("config") or {}
    )


def _torch_load(file: str) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"(?:Unsupported global|GLOBAL)[:\s]+(?:GLOBAL\s+)?([\w.]+)", str(e))
        if named is None:
            raise UserError(f"{file} is not a torch checkpoint ({_first_line(e)}): give nanoGPT's ckpt.pt") from None
        raise UserError(
            f"refusing to load {file}: it holds the object {named.group(1)}, and a nanoGPT checkpoint holds only "
            "tensors, dicts, numbers and strings; it was not written by nanoGPT's train.py"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise UserError(f"{file} is not a readable torch checkpoint ({_first_line(e)}): copy it again") from None


def _our_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """nanoGPT's key names are ours (c_attn, c_proj, ln_1 ...): drop the compiled wrapper's prefix, and the causal
    mask buffers (`attn.bias`) that checkpoints from before PyTorch 2.0 hold; lm_head and wte are one tied tensor."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix(COMPILED)
        if key.endswith((".attn.bias", ".attn.masked_bias")) and value.dim() == 4:
            continue
        out[key] = value
    if "lm_head.weight" not in out and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def meta_candidates(ckpt: NanoGPTCheckpoint) -> list[str]:
    """Where nanoGPT's sample.py looks for the data set's meta.pkl (data/<dataset>/ under the working dir), then
    the same under the folder holding the out_dir (nanoGPT's checkout, where out_dir usually is)."""
    dataset = ckpt.config.get("dataset")
    if not isinstance(dataset, str):
        return []
    repo = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.path)))
    paths = [os.path.join("data", dataset, meta.META), os.path.join(repo, "data", dataset, meta.META)]
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def tokenizer_of(
    ckpt: NanoGPTCheckpoint, otherwise: tuple[dict[str, Any], int] | None = None
) -> tuple[dict[str, Any], int]:
    """Our tokenizer spec and the real vocabulary size: the data set's characters when its meta.pkl is found,
    else GPT-2's BPE (nanoGPT's own fallback), which only a checkpoint of GPT-2's vocabulary can speak. Finetuning
    on character data of exactly the checkpoint's vocabulary size, with no meta.pkl to compare, takes `otherwise`
    (the data's own characters), with a warning."""
    found = next((p for p in meta_candidates(ckpt) if os.path.isfile(p)), None)
    if found is not None:
        m = meta.read(found)
        chars = meta.chars(m)
        if m["vocab_size"] > ckpt.model.vocab_size:
            raise UserError(
                f"{found} has {m['vocab_size']} tokens but {ckpt.path} only {ckpt.model.vocab_size} embeddings: "
                "this is not the data set the checkpoint was trained on"
            )
        if chars is not None:
            log.info("tokenizer: the %d characters of %s", len(chars), found)
            return {"kind": "char", "chars": chars}, m["vocab_size"]
    if ckpt.model.vocab_size < GPT2_VOCAB and otherwise is not None and otherwise[1] == ckpt.model.vocab_size:
        log.warning("no meta.pkl for %s: assuming the data's %d characters are its own", ckpt.path, otherwise[1])
        return otherwise
    if ckpt.model.vocab_size < GPT2_VOCAB:
        looked = " or ".join(meta_candidates(ckpt)) or "data/<dataset>/meta.pkl (its config names no dataset)"
        raise UserError(
            f"{ckpt.path} has a {ckpt.model.vocab_size}-token vocabulary, not GPT-2's, and no meta.pkl was found at "
            f"{looked}: run from nanoGPT's folder, or copy the data set's meta.pkl there"
        )
    log.info("no meta.pkl for %s: GPT-2's BPE, as nanoGPT's sample.py assumes", ckpt.path)
    return {"kind": "gpt2"}, GPT2_VOCAB


def load_run(path: str) -> LoadedRun:
    """A nanoGPT checkpoint as a finished run: what sample.py, eval.py and export.py take."""
    ckpt = load(path)
    spec, vocab = tokenizer_of(ckpt)
    info = {
        "model": dataclasses.asdict(ckpt.model),
        "tokenizer": spec,
        "data_vocab_size": vocab,
        "iter": ckpt.iter_num,
        "best_val_loss": ckpt.best_val_loss,
        "nanogpt": os.path.abspath(ckpt.path),
    }
    return LoadedRun(ckpt.build(), vocab, ckpt.path, info, os.path.dirname(os.path.abspath(ckpt.path)))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
