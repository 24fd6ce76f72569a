"""The `text` kind of data set: text from a file, folder, glob, URL or package (nanogpt/data/sources.py), held in
memory, split as nanoGPT splits it (the first 1 - val_fraction of the characters train, the rest val) and tokenized
into train.bin, val.bin and meta.json (the format: nanogpt/data/token_files.py).

A rebuild (force=true) keeps the old files until the new ones are complete: the text is read and tokenized and the
new files written under a work folder first, so a missing source or a kill leaves the old set as it was; only then
are they renamed over the old ones, meta.json last."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator

import numpy as np

from nanogpt import tokenizer as tok
from nanogpt.atomic import atomic_write
from nanogpt.config import DataConfig
from nanogpt.data.sources import Text, load_text
from nanogpt.data.token_files import SPLITS, finish_dataset, forget_meta, remove_work_folders, tokenized_meta
from nanogpt.errors import UserError

log = logging.getLogger(__name__)


def prepare_text(data: DataConfig, out: str) -> str:
    """Tokenize the text of `data.source` into `out`; returns `out`."""
    if data.source is None:
        raise UserError(f"data set {data.name!r} has no source: give data.source=<file, folder, glob or URL>")
    loaded = load_text(data.source, out, data.fallback)
    text = loaded.text
    log.info("read %s characters from %s", f"{len(text):,}", loaded.source)
    n = int(len(text) * (1 - data.val_fraction))
    docs = {"train": _documents(loaded, 0, n), "val": _documents(loaded, n, len(text))}
    tokenizer, extra = tok.for_dataset(
        data,
        chars=lambda: sorted(set(text)),
        train_texts=lambda: _chunks(docs["train"]),
        length=None,
        trained_on=f"the train split: {n:,} characters of {loaded.source}",
    )
    ids = {split: encode_documents(tokenizer, docs[split]) for split in SPLITS}
    for split in SPLITS:
        if not ids[split]:
            raise UserError(
                f"the {split} split is empty: the source text is too short for data.val_fraction; give more text"
            )
    meta = tokenized_meta(
        tokenizer,
        counts={split: len(ids[split]) for split in SPLITS},
        text_bytes={split: sum(len(d.encode("utf-8")) for d in docs[split]) for split in SPLITS},
        source=loaded.source,
        val_texts=lambda: docs["val"],
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        **extra,
    )
    _write(out, tokenizer, ids, meta)
    return out


def _write(out: str, tokenizer: tok.Tokenizer, ids: dict[str, list[int]], meta: dict) -> None:
    """The new files written and fsynced under a work folder, then renamed into `out`, meta.json last."""
    os.makedirs(out, exist_ok=True)
    remove_work_folders(out)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as work:
        names = [f"{split}.bin" for split in SPLITS]
        for split, name in zip(SPLITS, names, strict=True):
            atomic_write(os.path.join(work, name), np.asarray(ids[split], dtype=meta["dtype"]).tobytes())
            log.info("%s: %s tokens", split, f"{len(ids[split]):,}")
        if isinstance(tokenizer, tok.BPETokenizer):
            tokenizer.save(work)
            names.append(tokenizer.FILE)
        forget_meta(out)
        for name in names:  # the same file system: renames, not copies
            os.replace(os.path.join(work, name), os.path.join(out, name))
    finish_dataset(out, meta)


def _documents(loaded: Text, start: int, stop: int) -> list[str]:
    """The documents (files) of `loaded.text[start:stop]`, cut where one ends and the next begins."""
    cuts = [start, *(s for s in loaded.starts if start < s < stop), stop]
    return [loaded.text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def _chunks(docs: list[str]) -> Iterator[str]:
    from nanogpt.bpe import text_chunks

    for doc in docs:
        yield from text_chunks(doc)


def encode_documents(tokenizer: tok.Tokenizer, docs: list[str]) -> list[int]:
    """The tokens of `docs`, with end-of-text between two documents where the vocabulary has one (a
    character vocabulary has none: the files simply follow each other)."""
    if tokenizer.eot_token is None:
        return tokenizer.encode_ordinary("".join(docs))
    ids: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            ids.append(tokenizer.eot_token)
        ids += tokenizer.encode_ordinary(doc)
    return ids
