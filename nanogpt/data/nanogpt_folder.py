"""A karpathy/nanoGPT data folder trained on as it is: `train.bin` and `val.bin` (uint16 token ids, nothing else
in the files) and, for character-level sets, `meta.pkl` with the vocabulary. Without meta.pkl the tokens are
GPT-2's BPE, as nanoGPT's train.py and sample.py assume. Nothing is written into the folder: its meta.json is
computed here, in memory, from the files' sizes and the safely read meta.pkl."""

from __future__ import annotations

import os

from nanogpt.errors import UserError
from nanogpt.from_nanogpt import meta as nanogpt_meta

SPLIT_FILES = ("train.bin", "val.bin")
DTYPE = "uint16"  # nanoGPT's prepare.py scripts all write np.uint16
GPT2_VOCAB = 50257


def is_folder(path: str) -> bool:
    """A nanoGPT data folder: both token files, and no meta.json (which would make it one of ours)."""
    return all(os.path.isfile(os.path.join(path, f)) for f in SPLIT_FILES) and not os.path.exists(
        os.path.join(path, "meta.json")
    )


def read_meta(path: str) -> dict:
    """Our meta.json's fields for a nanoGPT folder: tokenizer, vocab_size, dtype and each split's token count."""
    sizes = {f: os.path.getsize(os.path.join(path, f)) for f in SPLIT_FILES}
    odd = [f for f, n in sizes.items() if n % 2]
    if odd:
        raise UserError(f"{os.path.join(path, odd[0])} has an odd number of bytes: not uint16 tokens (truncated?)")
    pkl = os.path.join(path, nanogpt_meta.META)
    if os.path.isfile(pkl):
        meta = nanogpt_meta.read(pkl)
        chars = nanogpt_meta.chars(meta)
        if chars is None:
            raise UserError(f"{pkl} has no itos: only character-level meta.pkl files say what their tokens are")
        tokenizer, vocab = {"kind": "char", "chars": chars}, meta["vocab_size"]
    else:
        tokenizer, vocab = {"kind": "gpt2"}, GPT2_VOCAB
    return {
        "tokenizer": tokenizer,
        "vocab_size": vocab,
        "dtype": DTYPE,
        "train_tokens": sizes["train.bin"] // 2,
        "val_tokens": sizes["val.bin"] // 2,
        "source": os.path.abspath(path),
        "nanogpt_folder": True,
    }
