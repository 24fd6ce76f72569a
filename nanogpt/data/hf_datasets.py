"""Documents through Hugging Face `datasets`: a hub name (OpenWebText through the hub's Parquet conversion when
its loading script is refused), a `save_to_disk` folder, a folder of data files, or local .jsonl/.json/.csv/.parquet/
.arrow/.txt files; read whole (for nanogpt/data/documents.py) or streamed (for nanogpt/data/stream.py); nanoGPT's
seeded train/val split; the hub's and the files' failures as one line each."""

from __future__ import annotations

import glob
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from nanogpt.config import DataConfig
from nanogpt.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

SPLIT_SEED = 2357  # nanoGPT's seed for the train/val split of OpenWebText
PARQUET_REVISION = "refs/convert/parquet"  # the hub's branch holding its Parquet conversion of a data set
# Documents in the train split of hub sets whose conversion we may read, to notice a partial conversion.
KNOWN_DOCUMENTS = {"Skylion007/openwebtext": 8_013_769, "openwebtext": 8_013_769}
# `datasets` builders for local files, by extension (compressed files keep the builder of their inner one).
_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def load_documents(data: DataConfig, num_proc: int) -> tuple[Dataset, str]:
    """The documents (one column, `data.text_column`) of the dataset's train split, and what was read.

    `data.dataset` is a hub name (`openwebtext`), a folder written by `save_to_disk`, a folder of data
    files, or a file or glob of .jsonl/.json/.csv/.parquet/.arrow/.txt files (each .txt file is one document).
    """
    import datasets

    spec = data.dataset
    assert spec is not None
    path = os.path.expanduser(spec)
    config = data.subset
    try:
        if os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json")):
            loaded = datasets.load_from_disk(path)
            source = os.path.abspath(path)
        elif os.path.isdir(path):
            loaded = datasets.load_dataset(path, config, num_proc=num_proc)
            source = os.path.abspath(path)
        elif os.path.isfile(path) or glob.has_magic(path):
            files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
            if not files:
                raise UserError(f"data.dataset={spec!r} matches no files: give a hub name, a folder or data files")
            builder = _builder(files)
            extra = {"sample_by": "document"} if builder == "text" else {}
            loaded = datasets.load_dataset(builder, data_files=files, **extra)
            source = os.path.abspath(path)
        else:
            loaded, source = _load_hub(spec, config, num_proc)
    except UserError:
        raise
    except Exception as e:  # the hub, the network and file parsing fail in many types
        raise UserError(_load_error(data, e, whole=True)) from None
    docs = _train_split(loaded, spec)
    _check_conversion(spec, source, len(docs))
    column = data.text_column
    if column not in docs.column_names:
        raise UserError(
            f"data.text_column={column!r} is not a column of {spec!r} (it has {', '.join(docs.column_names)}): "
            "set data.text_column to the one holding the text"
        )
    dtype = getattr(docs.features[column], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise UserError(f"column {column!r} of {spec!r} holds {docs.features[column]}, not text: set data.text_column")
    docs = docs.select_columns([column]).with_format(None)
    return (docs if column == "text" else docs.rename_column(column, "text")), source


def _builder(files: list[str]) -> str:
    builders = set()
    for f in files:
        name = f.lower()
        for suffix in _COMPRESSION:
            name = name.removesuffix(suffix)
        builder = _BUILDERS.get(os.path.splitext(name)[1])
        if builder is None:
            raise UserError(
                f"cannot tell the format of {f!r}: data.dataset files must end in {', '.join(sorted(_BUILDERS))}"
            )
        builders.add(builder)
    if len(builders) > 1:
        raise UserError(f"data.dataset mixes file formats ({', '.join(sorted(builders))}): give files of one format")
    return builders.pop()


def _train_split(loaded: Any, spec: str) -> Dataset:
    """The split to cut train/val from: `train`, or the only split there is (nanoGPT ignores the others)."""
    if not hasattr(loaded, "keys"):  # a single Dataset
        return loaded
    names = list(loaded.keys())
    if "train" in loaded:
        return loaded["train"]
    if len(names) == 1:
        return loaded[names[0]]
    raise UserError(f"data.dataset={spec!r} has splits {', '.join(names)} and none is called train: save one split")


def split_documents(docs: Dataset, val_fraction: float, spec: str, work_dir: str) -> dict[str, Dataset]:
    """nanoGPT's split: a seeded shuffle of the documents, `val_fraction` of them held out as `val`.

    Only indices are shuffled, written to `work_dir` (8 bytes a document); the text is not copied."""
    n = len(docs)
    if math.ceil(val_fraction * n) >= n:  # datasets' rounding: ceil for the held-out part
        raise UserError(
            f"data.dataset={spec!r} has {n} documents: too few to hold out data.val_fraction={val_fraction} "
            "of them and keep some for training; give more documents or lower data.val_fraction"
        )
    parts = docs.train_test_split(
        test_size=val_fraction,
        seed=SPLIT_SEED,
        shuffle=True,
        train_indices_cache_file_name=os.path.join(work_dir, "train-indices.arrow"),
        test_indices_cache_file_name=os.path.join(work_dir, "val-indices.arrow"),
    )
    return {"train": parts["train"], "val": parts["test"]}


# ---- the hub ----


def _load_hub(spec: str, subset: str | None, num_proc: int) -> tuple[Any, str]:
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


def _check_conversion(spec: str, source: str, documents: int) -> None:
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
        raise UserError(_load_error(data, e, whole=False)) from None
    columns = ds.column_names
    if columns is not None and data.text_column not in columns:
        raise UserError(
            f"data.text_column={data.text_column!r} is not a column of {spec!r} (it has {', '.join(columns)}): "
            "set data.text_column to the one holding the text"
        )
    return ds.select_columns([data.text_column])


def _load_error(data: DataConfig, e: Exception, whole: bool) -> str:
    """One line for a data set `datasets` could not load, read whole or streamed."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    spec = data.dataset
    if isinstance(e, ValueError) and "BuilderConfig" in first and "not found" in first:
        available = first.split("Available:", 1)[-1].strip() if "Available:" in first else "see the data set's page"
        return f"data.subset={data.subset!r} is not a subset of {spec!r}: choose one of {available}"
    if not whole and (isinstance(e, ConnectionError) or "offline" in first.lower()):
        return (
            f"cannot reach the Hugging Face hub for data.dataset={spec!r} ({first}) and there is no local copy: "
            "connect to the network (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), or give data.dataset=<a local "
            "folder of its parquet files>"
        )
    failed = f"cannot load data.dataset={spec!r} ({type(e).__name__}: {first})"
    if whole:  # `datasets` caches a whole set once downloaded: one run with network is enough
        return f"{failed}: check the name (and data.subset), download it once with network, or give local files"
    return f"{failed}: check the name and data.subset"
