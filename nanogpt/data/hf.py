"""Data sets of documents loaded through Hugging Face `datasets`: OpenWebText, a hub name, or local files.

nanoGPT's recipe: the `train` split is cut into train/val by `train_test_split(test_size=val_fraction,
seed=2357, shuffle=True)`; every document is tokenized with `encode_ordinary` and followed by one
end-of-text token (50256). Worker processes tokenize ranges of documents; the main process appends their
tokens to the .bin file in document order as they arrive (plain writes: the bytes nanoGPT's memmap would
hold, without mapping a file the size of the corpus), so memory holds a few ranges at a time, never the
token stream. Files are written under temporary names and renamed at the end; meta.json comes last.

With the character tokenizer, documents are joined by a newline instead (a character vocabulary has no
end-of-text token), and the vocabulary is every character of the data set, found in a first pass. With
`data.tokenizer=bpe`, a byte-level BPE is first trained on the train split's documents (nanogpt/bpe.py) and
saved as tokenizer.json; documents end with its `<|endoftext|>`.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from nanogpt import tokenizer as tok
from nanogpt.bits_per_byte import bytes_per_token, compare_with_gpt2
from nanogpt.config import DataConfig
from nanogpt.data import hub
from nanogpt.data.tokens import SPLITS, finish_dataset, token_dtype
from nanogpt.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

SPLIT_SEED = 2357  # nanoGPT's seed for the train/val split of OpenWebText
DOC_SEPARATOR = "\n"  # between documents with the character tokenizer
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
_RANGES_IN_FLIGHT = 2  # tasks queued per worker: enough to keep them busy, few enough to bound memory
_ROWS_PER_READ = 8  # documents read from the memory-mapped files between two releases of their pages
_MADV_DONTNEED = 4  # Linux


def prepare_hf_dataset(data: DataConfig, out: str) -> str:
    """Tokenize the documents of `data.dataset` into `out`/{train,val}.bin and meta.json; returns `out`."""
    if data.source is not None:
        raise UserError(
            f"data.source={data.source!r} and data.dataset={data.dataset!r} are both set: keep one "
            "(data.source=null to use the dataset)"
        )
    num_proc = data.num_proc or _cores()
    docs, source = load_documents(data, num_proc)
    os.makedirs(out, exist_ok=True)
    _forget_previous(out)
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as work:
        splits = split_documents(docs, data.val_fraction, data.dataset or "", work)
        tokenizer, encoder = _tokenizer(data, splits, source, num_proc, extra)
        dtype = token_dtype(tokenizer.vocab_size)
        tmp = {split: os.path.join(work, f"{split}.bin") for split in SPLITS}
        counts: dict[str, int] = {}
        text_bytes: dict[str, int] = {}
        for split in SPLITS:
            counts[split], text_bytes[split] = write_tokens(
                splits[split], tmp[split], encoder, dtype, num_proc, f"tokenizing {split}"
            )
            log.info("%s: %s tokens from %s documents", split, f"{counts[split]:,}", f"{len(splits[split]):,}")
        if isinstance(tokenizer, tok.BPETokenizer):
            val = (text for batch in splits["val"].iter(batch_size=64) for text in batch["text"])
            extra["compression"] = compare_with_gpt2(val, tokenizer.encode_ordinary, "bpe")
            tokenizer.save(out)
        for split in SPLITS:  # the same file system: renames, not copies
            os.replace(tmp[split], os.path.join(out, f"{split}.bin"))
        documents = {split: len(splits[split]) for split in SPLITS}
    meta = {
        "tokenizer": tokenizer.to_meta(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": dtype.name,
        **{f"{split}_tokens": counts[split] for split in SPLITS},
        "bytes_per_token": bytes_per_token(text_bytes, counts),
        "source": source,
        "subset": data.subset,
        "text_column": data.text_column,
        "documents": documents,
        "split": {"val_fraction": data.val_fraction, "seed": SPLIT_SEED},
        "document_end": DOC_SEPARATOR if tokenizer.eot_token is None else tok.EOT,
        "fingerprint": getattr(docs, "_fingerprint", None),  # datasets' hash of the loaded data
        **extra,
    }
    finish_dataset(out, meta)
    return out


def _tokenizer(
    data: DataConfig, splits: dict[str, Dataset], source: str, num_proc: int, extra: dict
) -> tuple[tok.Tokenizer, tuple]:
    """The data set's tokenizer, and what a worker process needs to rebuild it; a trained BPE's settings go
    into `extra` for meta.json."""
    if data.tokenizer == "char":
        chars = char_vocabulary(splits, num_proc)
        return tok.CharTokenizer(chars), ("char", chars)
    if data.tokenizer == "bpe":
        train = splits["train"]
        trained_on = f"the train split: {len(train):,} documents of {source}"
        texts = (batch["text"] for batch in train.iter(batch_size=1000))
        tokenizer, extra["bpe"] = tok.train_bpe_for_dataset(data, texts, len(train), trained_on)
        return tokenizer, ("bpe", tokenizer.definition)
    return tok.GPT2Tokenizer(), ("gpt2",)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _forget_previous(out: str) -> None:
    """A rebuild starts by removing meta.json, so that a half-rebuilt data set never looks complete, and
    the work folders of builds that were killed."""
    meta = os.path.join(out, "meta.json")
    if os.path.exists(meta):
        os.remove(meta)
    for leftover in glob.glob(os.path.join(out, ".build-*")):
        shutil.rmtree(leftover, ignore_errors=True)


# ---- loading --------------------------------------------------------------------------------------------


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
            loaded, source = hub.load(spec, config, num_proc)
    except UserError:
        raise
    except Exception as e:  # the hub, the network and file parsing fail in many types
        raise UserError(_load_error(spec, e)) from None
    docs = _train_split(loaded, spec)
    hub.check_conversion(spec, source, len(docs))
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


def _load_error(spec: str, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (
        f"cannot load data.dataset={spec!r} ({type(e).__name__}: {first}): check the name (and "
        "data.subset), download it once with network (datasets caches it), or give local files"
    )


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


# ---- tokenizing, in worker processes --------------------------------------------------------------------

_worker: dict[str, Any] = {}  # each worker's documents and encoder, set once by _init_worker


def _init_worker(docs: Dataset, encoder: tuple) -> None:
    _worker["docs"] = docs
    if encoder[0] in ("gpt2", "bpe"):
        t = tok.GPT2Tokenizer() if encoder[0] == "gpt2" else tok.BPETokenizer(encoder[1])
        _worker["encode"] = _eot_encoder(t.encode_ordinary, t.eot_token, token_dtype(t.vocab_size))
    elif encoder[0] == "char":
        _worker["encode"] = _char_encoder(encoder[1])
    else:  # the vocabulary pass
        _worker["encode"] = None
    # A character data set's newline between documents is text; an end-of-text token stands for none.
    _worker["separator_bytes"] = len(DOC_SEPARATOR.encode()) if encoder[0] == "char" else 0


def _eot_encoder(ordinary: Callable[[str], list[int]], eot: int, dtype: np.dtype) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        ids: list[int] = []
        for text in texts:
            ids += ordinary(text)
            ids.append(eot)
        return np.array(ids, dtype=dtype)

    return encode


def _char_encoder(chars: list[str]) -> Callable[[list[str]], np.ndarray]:
    codes = np.array([ord(c) for c in chars], dtype=np.uint32)  # sorted, as the vocabulary is
    dtype = token_dtype(len(chars))

    def encode(texts: list[str]) -> np.ndarray:
        text = "".join(t + DOC_SEPARATOR for t in texts)
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return np.searchsorted(codes, points).astype(dtype)

    return encode


def _texts(start: int, stop: int) -> list[str]:
    """Documents start..stop-1, read `_ROWS_PER_READ` at a time, each read's mapped pages let go at once."""
    texts: list[str] = []
    for i in range(start, stop, _ROWS_PER_READ):
        texts += _worker["docs"][i : min(i + _ROWS_PER_READ, stop)]["text"]
        _release_mapped_pages()
    return texts


def _encode_range(start: int, stop: int) -> tuple[np.ndarray, int]:
    """The tokens of documents start..stop-1, and the UTF-8 bytes of text they stand for."""
    texts = _texts(start, stop)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts) + len(texts) * _worker["separator_bytes"]
    return _worker["encode"](texts), n_bytes


def _chars_of_range(start: int, stop: int) -> set[str]:
    seen: set[str] = set()
    for text in _texts(start, stop):
        seen.update(text)
    return seen


def _release_mapped_pages() -> None:
    """Drop this process's mappings of the data set's pages read so far (Linux; elsewhere a no-op).

    The arrow files are memory-mapped read-only, and the documents of a shuffled split sit anywhere in them.
    Every page a read touches, and the neighbours the kernel maps along with it (hundreds of KB a document),
    would stay in the worker's resident set, which would grow to the size of the corpus. MADV_DONTNEED on a
    read-only file mapping only forgets the mapping: the pages stay in the page cache, and a later read maps
    them again."""
    if "mapped" not in _worker:  # the mappings are made when the data set is opened: look them up once
        _worker["mapped"] = _mapped_ranges({os.path.realpath(f["filename"]) for f in _worker["docs"].cache_files})
        _worker["madvise"] = ctypes.CDLL(None, use_errno=True).madvise if _worker["mapped"] else None
    for start, length in _worker["mapped"]:
        _worker["madvise"](ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_DONTNEED)


def _mapped_ranges(files: set[str]) -> list[tuple[int, int]]:
    """(address, length) of this process's read-only mappings of `files`, from /proc/self/maps."""
    if not files or not sys.platform.startswith("linux"):
        return []
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and "w" not in fields[1] and fields[5].rstrip("\n") in files:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end - start))
    return ranges


def _ranges(n: int, num_proc: int) -> list[tuple[int, int]]:
    """Contiguous document ranges: a few per worker for small sets, at most 256 documents each for large."""
    size = max(1, min(256, -(-n // (4 * num_proc))))
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def _in_order(fn: Callable[[int, int], Any], docs: Dataset, encoder: tuple, num_proc: int, desc: str) -> Iterator[Any]:
    """`fn` of every document range, in document order, computed by `num_proc` worker processes (a pool even
    for one: the main process never reads the text, so its memory stays flat).

    At most `_RANGES_IN_FLIGHT` ranges per worker are queued or done but not yet consumed: memory holds a
    handful of ranges whatever the size of the data set."""
    ranges = _ranges(len(docs), num_proc)
    with tqdm(total=len(docs), desc=desc, unit="docs", dynamic_ncols=True) as bar:
        todo = iter(ranges)
        with multiprocessing.get_context().Pool(num_proc, _init_worker, (docs, encoder)) as pool:
            pending: deque = deque()

            def submit() -> None:
                task = next(todo, None)
                if task is not None:
                    pending.append((task[1] - task[0], pool.apply_async(fn, task)))

            for _ in range(_RANGES_IN_FLIGHT * num_proc):
                submit()
            while pending:
                count, result = pending.popleft()
                submit()
                yield result.get()
                bar.update(count)


def char_vocabulary(splits: dict[str, Dataset], num_proc: int) -> list[str]:
    """Every character in the documents, plus the separator, sorted: the character tokenizer's vocabulary."""
    seen = {DOC_SEPARATOR}
    for split in SPLITS:
        for chars in _in_order(_chars_of_range, splits[split], ("none",), num_proc, f"characters of {split}"):
            seen |= chars
    return sorted(seen)


def write_tokens(
    docs: Dataset, path: str, encoder: tuple, dtype: np.dtype, num_proc: int, desc: str
) -> tuple[int, int]:
    """Tokenize `docs` into the token file `path`, appending each range's tokens in document order;
    returns the number of tokens and of UTF-8 bytes of text. The file is fsynced before it is returned."""
    n, n_bytes = 0, 0
    with open(path, "wb") as f:
        for ids, size in _in_order(_encode_range, docs, encoder, num_proc, desc):
            f.write(memoryview(np.ascontiguousarray(ids, dtype=dtype)))
            n += len(ids)
            n_bytes += size
        f.flush()
        os.fsync(f.fileno())
    return n, n_bytes
