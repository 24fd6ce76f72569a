"""Build a data set's token files from text: source text -> tokens -> train.bin, val.bin, meta.json
(the format: nanogpt/data/tokens.py). Hugging Face data sets go through nanogpt/data/hf.py."""

from __future__ import annotations

import hashlib
import logging
import os

from nanogpt import tokenizer as tok
from nanogpt.config import DataConfig
from nanogpt.data.sources import load_text
from nanogpt.data.tokens import dataset_dir, is_prepared, write_dataset
from nanogpt.errors import UserError

log = logging.getLogger(__name__)


def prepare(data: DataConfig, data_dir: str, force: bool = False) -> str:
    """Make `<data_dir>/<data.name>/` hold a complete data set; returns that folder."""
    out = dataset_dir(data, data_dir)
    if not force and is_prepared(out):
        log.info("%s is already prepared (force=true rebuilds it)", out)
        if os.path.exists(os.path.join(out, "progress.json")):  # a kill came between meta.json and its removal
            from nanogpt.data.writer import forget_progress

            forget_progress(out)
        return out
    if data.shards_dir is not None or data.shards is not None:
        from nanogpt.data.pretokenized import prepare_pretokenized

        return prepare_pretokenized(data, out)
    if data.streaming:
        from nanogpt.data.stream import prepare_stream  # `datasets` costs a second to import

        return prepare_stream(data, out)
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
