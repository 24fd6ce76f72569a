"""Build a data set's token files: source text -> tokens -> train.bin, val.bin, meta.json.

meta.json is written last and names the token counts, so a data set is complete exactly when meta.json
exists and the .bin files have the sizes it states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from nanogpt import tokenizer as tok
from nanogpt.config import DataConfig
from nanogpt.data.sources import load_text
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


def dataset_dir(data: DataConfig, data_dir: str) -> str:
    return os.path.join(data_dir, data.name)


def read_meta(path: str) -> dict:
    """A prepared data set's meta.json, checked against its token files."""
    meta_path = os.path.join(path, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path} is not prepared (no meta.json): run python prepare.py data=...") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e}): prepare the data set again with force=true") from None
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        bin_path = os.path.join(path, f"{split}.bin")
        want = meta[f"{split}_tokens"] * itemsize
        have = os.path.getsize(bin_path) if os.path.exists(bin_path) else -1
        if have != want:
            raise UserError(
                f"{bin_path} has {have} bytes but meta.json says {want} ({meta[f'{split}_tokens']} tokens): "
                "the token files are truncated or stale; prepare the data set again with force=true"
            )
    return meta


def is_prepared(path: str) -> bool:
    try:
        read_meta(path)
        return True
    except UserError:
        return False


def prepare(data: DataConfig, data_dir: str, force: bool = False) -> str:
    """Make `<data_dir>/<data.name>/` hold a complete data set; returns that folder."""
    out = dataset_dir(data, data_dir)
    if not force and is_prepared(out):
        log.info("%s is already prepared (force=true rebuilds it)", out)
        return out
    if data.dataset is not None:
        from nanogpt.data.hf import prepare_hf_dataset  # `datasets` costs a second to import

        return prepare_hf_dataset(data, out)
    if data.source is None:
        raise UserError(f"data set {data.name!r} has no source: give data.source=<file, folder, glob or URL>")
    loaded = load_text(data.source, out, data.fallback)
    text = loaded.text
    log.info("read %s characters from %s", f"{len(text):,}", loaded.source)
    tokenizer = tok.CharTokenizer.from_text(text) if data.tokenizer == "char" else tok.GPT2Tokenizer()
    # nanoGPT's split: the first (1 - val_fraction) of the characters train, the rest validate.
    n = int(len(text) * (1 - data.val_fraction))
    encode = getattr(tokenizer, "encode_ordinary", tokenizer.encode)
    ids = {"train": encode(text[:n]), "val": encode(text[n:])}
    meta = {
        "tokenizer": tokenizer.to_meta(),
        "vocab_size": tokenizer.vocab_size,
        "source": loaded.source,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    write_dataset(out, ids, meta)
    return out


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def write_dataset(out: str, ids: dict[str, list[int]], meta: dict) -> None:
    """Write the token files of a data set small enough to hold in memory."""
    for split in SPLITS:
        if not ids[split]:
            raise UserError(
                f"the {split} split is empty: the source text is too short for data.val_fraction; give more text"
            )
    dtype = token_dtype(meta["vocab_size"])
    os.makedirs(out, exist_ok=True)
    for split in SPLITS:
        arr = np.asarray(ids[split], dtype=dtype)
        atomic_write(os.path.join(out, f"{split}.bin"), arr.tobytes())
        log.info("%s: %s tokens", split, f"{len(arr):,}")
    finish_dataset(out, {**meta, "dtype": dtype.name, **{f"{s}_tokens": len(ids[s]) for s in SPLITS}})


def finish_dataset(out: str, meta: dict) -> None:
    """Write meta.json, which marks the data set complete."""
    atomic_write(os.path.join(out, "meta.json"), (json.dumps(meta, indent=1) + "\n").encode())
    log.info("wrote %s (vocab %d)", out, meta["vocab_size"])


def atomic_write(path: str, payload: bytes) -> None:
    """Replace `path` with `payload` all at once: a kill leaves the old file or the new one, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
