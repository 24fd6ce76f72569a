"""OpenAI's GPT-2 checkpoints <-> our GPT, through Hugging Face transformers' GPT2LMHeadModel.

transformers is imported only here, and only when called: it costs seconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch

from nanogpt import tokenizer as tok
from nanogpt.config import GPT2_ACTIVATIONS, PRETRAINED, ModelConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.tokenizer import CHAT_TOKENS

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
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load {name_or_dir!r} ({str(e).splitlines()[0]}): download it once with network "
            "(it is cached), or pass a local folder"
        ) from None
    return from_hf_model(hf, dropout, block_size, name=name_or_dir)


def from_hf_model(hf, dropout: float = 0.0, block_size: int | None = None, name: str = "model") -> GPT:
    """Our GPT holding the weights of a transformers `GPT2LMHeadModel`."""
    c = hf.config
    differences = {
        "activation_function": c.activation_function not in (*GPT2_ACTIVATIONS.values(), "gelu_pytorch_tanh"),
        "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
        "n_inner": c.n_inner not in (None, 4 * c.n_embd),
        "layer_norm_epsilon": c.layer_norm_epsilon != 1e-5,
        "tie_word_embeddings": not getattr(c, "tie_word_embeddings", True),
    }
    unlike = [f"{k}={getattr(c, k, None)}" for k, differs in differences.items() if differs]
    if unlike:
        raise UserError(f"{name!r} is not a GPT-2 this model can hold ({', '.join(unlike)}): use a GPT-2 checkpoint")
    if block_size is not None and block_size > c.n_positions:
        raise UserError(
            f"model.block_size={block_size} is larger than {name}'s context of {c.n_positions}: "
            f"use model.block_size<={c.n_positions}"
        )
    cfg = ModelConfig(
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        block_size=c.n_positions,
        vocab_size=c.vocab_size,
        dropout=dropout,
        bias=True,
        activation="gelu_exact" if c.activation_function == "gelu" else "gelu",
    )
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


def to_huggingface(
    model: GPT, vocab_size: int, out_dir: str, tokenizer_meta: dict, tokenizer_dir: str | None = None
) -> None:
    """Write `model` as a Hugging Face GPT-2 folder that `GPT2LMHeadModel.from_pretrained` loads.

    The vocabulary padding is trimmed to `vocab_size`; layers trained without biases get zero biases (the
    same function). GPT-2 BPE models get GPT-2's tokenizer files; trained BPE models their tokenizer.json (read
    from `tokenizer_dir`, checked against its recorded hash) as a PreTrainedTokenizerFast; character-level models
    get `char_vocab.json` (the character of each id) instead, since transformers has no character tokenizer.
    The folder is written under a temporary name and renamed: a kill leaves any previous export intact.
    """
    c = model.config
    if lacking := c.non_gpt2_options():
        raise UserError(
            f"this model was trained with model.{lacking[0]}, which Hugging Face's GPT-2 has no "
            "equivalent of: only GPT-2-architecture runs can be exported (sample it with sample.py instead)"
        )
    _check_folder(out_dir)
    from transformers import GPT2Config, GPT2LMHeadModel

    if not 0 < vocab_size <= c.vocab_size:
        raise ValueError(f"vocab_size {vocab_size} must be in (0, the model's {c.vocab_size}]")
    kind = tokenizer_meta.get("kind")
    trained = tok.from_meta({"tokenizer": tokenizer_meta}, tokenizer_dir) if kind == "bpe" else None
    eot = 50256 if kind == "gpt2" else trained.eot_token if trained else None
    hf_cfg = GPT2Config(
        vocab_size=vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function=GPT2_ACTIVATIONS[c.activation],
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=c.tie_embeddings,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    hf = GPT2LMHeadModel(hf_cfg)
    chat = _chat_ids(tokenizer_meta, trained)
    if chat:  # a reply ends at <|end|>: generate() stops there, as chat.py does
        hf.generation_config.eos_token_id = [chat[CHAT_TOKENS[-1]], eot]
    ours = model.state_dict()
    with torch.no_grad():
        for k, v in hf.state_dict().items():
            if k.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers of older transformers
                continue
            if k in ours:
                w = ours[k].t() if k.endswith(_TRANSPOSED) else ours[k]
                v.copy_(w[:vocab_size] if k in ("transformer.wte.weight", "lm_head.weight") else w)
            elif k.endswith(".bias"):
                v.zero_()  # trained with bias=False: a zero bias is the same function
            else:
                raise AssertionError(f"no weight for {k}")
    tmp = f"{out_dir.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        hf.save_pretrained(tmp)
        if kind == "gpt2":
            _save_gpt2_tokenizer(tmp, chat)
        elif isinstance(trained, tok.BPETokenizer):
            _save_trained_tokenizer(trained, tmp, c.block_size, chat)
        else:
            with open(os.path.join(tmp, "char_vocab.json"), "w", encoding="utf-8") as f:
                json.dump(tokenizer_meta.get("chars"), f, ensure_ascii=False)
        _replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_folder(out_dir: str) -> None:
    """Refuse to replace a folder that holds something other than a model (a typo could wipe a data dir)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"out={out_dir!r} is a file: give a folder to write the model into")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, "config.json")):
        raise UserError(f"out={out_dir!r} is a non-empty folder that holds no model: give a new or empty folder")


def _replace_folder(new: str, out_dir: str) -> None:
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    old = f"{out_dir.rstrip(os.sep)}.old-{os.getpid()}"
    if os.path.isdir(out_dir):
        os.rename(out_dir, old)
    os.rename(new, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _chat_ids(tokenizer_meta: dict, trained: tok.BPETokenizer | None) -> dict[str, int]:
    """The chat markers' ids where the vocabulary holds them (a chat run's), else {}."""
    if tokenizer_meta.get("kind") == "gpt2":
        special = tok.GPT2Tokenizer(chat=bool(tokenizer_meta.get("chat"))).special_tokens
    else:
        special = trained.special_tokens if trained is not None else {}
    return {t: special[t] for t in CHAT_TOKENS} if all(t in special for t in CHAT_TOKENS) else {}


def _add_chat_template(hf_tokenizer, chat: dict[str, int]) -> None:
    """The chat markers as special tokens at our ids, and our template as Jinja: `apply_chat_template` then gives
    the ids nanogpt/chat/template.py gives."""
    from nanogpt.chat.template import JINJA

    hf_tokenizer.add_special_tokens({"additional_special_tokens": list(chat)})
    got = {t: hf_tokenizer.convert_tokens_to_ids(t) for t in chat}
    if got != chat:  # they take the next free ids, which are ours: say so if that ever changes
        raise AssertionError(f"the exported tokenizer gave the chat markers {got}, not {chat}")
    hf_tokenizer.chat_template = JINJA


def _save_gpt2_tokenizer(out_dir: str, chat: dict[str, int]) -> None:
    """GPT-2's tokenizer files, from the offline copy of OpenAI's BPE files: `vocab.json` and `merges.txt`
    (OpenAI's `encoder.json` and `vocab.bpe` under the names transformers reads) plus transformers' own; a chat
    run's with its markers and chat template."""
    from transformers import GPT2TokenizerFast

    from nanogpt.tokenizer import gpt2_bpe_files

    files = gpt2_bpe_files()
    shutil.copyfile(files["encoder.json"], os.path.join(out_dir, "vocab.json"))
    shutil.copyfile(files["vocab.bpe"], os.path.join(out_dir, "merges.txt"))
    fast = GPT2TokenizerFast.from_pretrained(out_dir, model_max_length=1024)
    if chat:
        _add_chat_template(fast, chat)
    fast.save_pretrained(out_dir)
    _update_tokenizer_config(out_dir, {}, chat)


def _save_trained_tokenizer(trained: tok.BPETokenizer, out_dir: str, block_size: int, chat: dict[str, int]) -> None:
    """A trained BPE as transformers' fast tokenizer: its tokenizer.json as it is, `<|endoftext|>` as the
    beginning and end of sequence, and no clean-up of spaces on decoding (ours decodes bytes as they are)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(trained.definition),
        bos_token=tok.EOT,
        eos_token=tok.EOT,
        model_max_length=block_size,
        clean_up_tokenization_spaces=False,
    )
    if chat:
        _add_chat_template(fast, chat)
    fast.save_pretrained(out_dir)
    # transformers 5 names the class TokenizersBackend, which 4.x does not know; both load this name.
    _update_tokenizer_config(out_dir, {"tokenizer_class": "PreTrainedTokenizerFast"}, chat)


def _update_tokenizer_config(out_dir: str, keys: dict, chat: dict[str, int]) -> None:
    """tokenizer_config.json with `keys` set, and a chat run's `chat_template`: transformers 5 saves the template
    as chat_template.jinja only, which transformers 4 before 4.43 does not read; both read it here."""
    from nanogpt.chat.template import JINJA

    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config.update(keys, **({"chat_template": JINJA} if chat else {}))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
