"""Data sets from the Hugging Face hub through `datasets`: whole (OpenWebText, for nanogpt/data/hf.py) or streamed
(FineWeb, for nanogpt/data/stream.py), and the hub's failures as one line each."""

from __future__ import annotations

import logging
import os
from typing import Any

from nanogpt.config import DataConfig
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

PARQUET_REVISION = "refs/convert/parquet"  # the hub's branch holding its Parquet conversion of a data set
# Documents in the train split of hub sets whose conversion we may read, to notice a partial conversion.
KNOWN_DOCUMENTS = {"Skylion007/openwebtext": 8_013_769, "openwebtext": 8_013_769}


def load(spec: str, subset: str | None, num_proc: int) -> tuple[Any, str]:
    """A hub data set. One still published with a loading script (OpenWebText), which datasets>=4 refuses to
    run, is read from the hub's Parquet conversion of it instead: the same documents in the same order, so
    nanoGPT's seeded split picks the same ones. The log and meta.json's `source` say which was read."""
    import datasets

    name = f"{spec}" + (f" ({subset})" if subset else "")
    try:
        loaded = datasets.load_dataset(spec, subset, num_proc=num_proc)
        log.info("loaded %s from the hub's data files", name)
        return loaded, f"datasets: {name}"
    except RuntimeError as e:
        if not _script_refused(e):
            raise
    log.warning(
        "%s is published with a loading script, which datasets %s refuses to run: reading the hub's Parquet "
        "conversion of it (revision %s) instead",
        name,
        datasets.__version__,
        PARQUET_REVISION,
    )
    try:
        loaded = datasets.load_dataset(spec, subset, revision=PARQUET_REVISION, num_proc=num_proc)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"data.dataset={spec!r} is published with a loading script, which datasets>=4 cannot run, and its "
            f"Parquet conversion did not load either ({type(e).__name__}: {first}): point data.dataset at its data "
            "files (parquet/jsonl) or a copy saved with save_to_disk"
        ) from None
    log.info("loaded %s from %s", name, PARQUET_REVISION)
    return loaded, f"datasets: {name} @ {PARQUET_REVISION}"


def _script_refused(e: BaseException) -> bool:
    return "scripts are no longer supported" in str(e)


def check_conversion(spec: str, source: str, documents: int) -> None:
    """The hub converts only part of some large sets to Parquet: say so rather than split differently unseen."""
    if source.endswith(PARQUET_REVISION) and documents != KNOWN_DOCUMENTS.get(spec, documents):
        log.warning(
            "the Parquet conversion of %s holds %s documents, not the %s of the original (the hub converts only "
            "part of some large sets): the train/val split differs from nanoGPT's",
            spec,
            f"{documents:,}",
            f"{KNOWN_DOCUMENTS[spec]:,}",
        )


def open_stream(data: DataConfig) -> Any:
    """`data.dataset`'s train split as an IterableDataset of one text column; loading errors as one line."""
    import datasets

    spec = data.dataset or ""
    local = os.path.expanduser(spec)
    try:  # a local folder (of data files, or laid out as the hub repo with its README) or a hub name
        ds = datasets.load_dataset(local if os.path.isdir(local) else spec, data.subset, split="train", streaming=True)
    except Exception as e:  # the hub, the network and the files fail in many types
        raise UserError(_load_error(data, e)) from None
    columns = ds.column_names
    if columns is not None and data.text_column not in columns:
        raise UserError(
            f"data.text_column={data.text_column!r} is not a column of {spec!r} (it has {', '.join(columns)}): "
            "set data.text_column to the one holding the text"
        )
    return ds.select_columns([data.text_column])


def _load_error(data: DataConfig, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    spec = data.dataset
    if isinstance(e, ValueError) and "BuilderConfig" in first and "not found" in first:
        available = first.split("Available:", 1)[-1].strip() if "Available:" in first else "see the data set's page"
        return f"data.subset={data.subset!r} is not a subset of {spec!r}: choose one of {available}"
    if isinstance(e, ConnectionError) or "offline" in first.lower():
        return (
            f"cannot reach the Hugging Face hub for data.dataset={spec!r} ({first}) and there is no local copy: "
            "connect to the network (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or give data.dataset=<a local "
            "folder of its parquet files>"
        )
    return f"cannot load data.dataset={spec!r} ({type(e).__name__}: {first}): check the name and data.subset"
