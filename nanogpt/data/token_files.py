"""The token-file format: what a prepared data set is on disk.

    <data_dir>/<data.name>/
        train.bin  val.bin   the token ids of each split, uint16 (uint32 when the vocabulary needs it)
        meta.json            tokenizer, vocab_size, dtype, token counts per split, source and its sha256, the UTF-8
                             bytes of text per token of each split (bits per byte divides by them)
        tokenizer.json       a trained BPE only (data.tokenizer=bpe): the tokenizer, its sha256 in meta.json

or, for the large sets, shards instead of the two .bin files:

        val_000000.bin train_000000.bin ...   llm.c-format shards (nanogpt/data/llmc_shards.py: a 1024-byte header,
                                              then the tokens), listed in meta.json's `shards` in order:
                                              {"train": [{"file": ..., "tokens": n}, ...], "val": [...]}

in the data set's folder or in `meta["shards"]["dir"]` (a folder of pre-tokenized shards used where it lies).
meta.json is written last and names the token counts, so a data set is complete exactly when meta.json
exists and its token files have the sizes it states.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nanogpt.atomic import atomic_write
from nanogpt.bits_per_byte import bytes_per_token, compare_with_gpt2
from nanogpt.config import DataConfig
from nanogpt.data import llmc_shards as llmc
from nanogpt.errors import UserError

if TYPE_CHECKING:
    from nanogpt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def dataset_dir(data: DataConfig, data_dir: str) -> str:
    return data.dir or os.path.join(data_dir, data.name)


def read_meta(path: str) -> dict:
    """A prepared data set's meta.json, checked against its token files."""
    meta_path = os.path.join(path, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        from nanogpt.data import nanogpt_folder  # train.bin + val.bin (+ meta.pkl) as nanoGPT wrote them

        if nanogpt_folder.is_folder(path):
            return nanogpt_folder.read_meta(path)
        raise UserError(f"{path} is not prepared (no meta.json): run python prepare.py data=...") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e}): prepare the data set again with force=true") from None
    check_files(path, meta)  # train.bin/val.bin, or the shards meta.json lists
    return meta


@dataclass(frozen=True)
class TokenFile:
    path: str
    tokens: int
    offset: int  # bytes before the first token


def split_files(path: str, meta: dict, split: str) -> list[TokenFile]:
    """The files holding `split`'s tokens, in order."""
    shards = meta.get("shards")
    if shards is None:
        return [TokenFile(os.path.join(path, f"{split}.bin"), meta[f"{split}_tokens"], 0)]
    root = shards.get("dir") or path
    return [TokenFile(os.path.join(root, s["file"]), s["tokens"], llmc.HEADER_BYTES) for s in shards[split]]


def check_files(path: str, meta: dict) -> None:
    """Every token file exists with the size meta.json implies (a stat each, no reading)."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        files = split_files(path, meta, split)
        for f in files:
            want = f.offset + f.tokens * itemsize
            have = os.path.getsize(f.path) if os.path.exists(f.path) else -1
            if have != want:
                raise UserError(
                    f"{f.path} has {have} bytes but meta.json says {want} ({f.tokens} tokens): the token files "
                    "are truncated or stale; prepare the data set again with force=true"
                )
        if sum(f.tokens for f in files) != meta[f"{split}_tokens"]:
            raise UserError(
                f"{os.path.join(path, 'meta.json')} lists {split} shards of {sum(f.tokens for f in files)} tokens "
                f"but says {meta[f'{split}_tokens']}: prepare the data set again with force=true"
            )


def is_prepared(path: str) -> bool:
    try:
        read_meta(path)
        return True
    except UserError:
        return False


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def tokenized_meta(
    tokenizer: Tokenizer,
    counts: dict[str, int],
    text_bytes: dict[str, int],
    source: str,
    val_texts: Callable[[], Iterable[str]],
    **extra: Any,
) -> dict:
    """meta.json of a data set tokenized here (not of shards tokenized elsewhere): the tokenizer, the token files'
    dtype and counts, bytes per token, where the text came from, `extra`; and a trained BPE's compression against
    GPT-2's on the validation text."""
    from nanogpt.tokenizer import BPETokenizer

    meta = {
        "tokenizer": tokenizer.to_meta(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        **{f"{split}_tokens": counts[split] for split in SPLITS},
        "bytes_per_token": bytes_per_token(text_bytes, counts),
        "source": source,
        **extra,
    }
    if isinstance(tokenizer, BPETokenizer):
        meta["compression"] = compare_with_gpt2(val_texts(), tokenizer.encode_ordinary, "bpe")
    return meta


def forget_meta(out: str) -> None:
    """Remove meta.json before any token file is replaced, so a half-rebuilt data set never looks complete."""
    if os.path.exists(os.path.join(out, "meta.json")):
        os.remove(os.path.join(out, "meta.json"))


def remove_work_folders(out: str) -> None:
    """The `.build-*` work folders of preparations that were killed (a finished one removes its own)."""
    for leftover in glob.glob(os.path.join(glob.escape(out), ".build-*")):
        shutil.rmtree(leftover, ignore_errors=True)


def finish_dataset(out: str, meta: dict) -> None:
    """Write meta.json, which marks the data set complete."""
    atomic_write(os.path.join(out, "meta.json"), (json.dumps(meta, indent=1) + "\n").encode())
    log.info("wrote %s (vocab %d)", out, meta["vocab_size"])
