"""The `hf` kind of data set: documents loaded through Hugging Face `datasets` (nanogpt/data/hf_datasets.py:
OpenWebText, a hub name, or local files), tokenized by worker processes into train.bin and val.bin.

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
import logging
import multiprocessing
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from nanogpt import tokenizer as tok
from nanogpt.config import DataConfig
from nanogpt.data.hf_datasets import SPLIT_SEED, load_documents, split_documents
from nanogpt.data.token_files import (
    SPLITS,
    finish_dataset,
    forget_meta,
    remove_work_folders,
    token_dtype,
    tokenized_meta,
)

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

DOC_SEPARATOR = "\n"  # between documents with the character tokenizer
_RANGES_IN_FLIGHT = 2  # tasks queued per worker: enough to keep them busy, few enough to bound memory
_ROWS_PER_READ = 8  # documents read from the memory-mapped files between two releases of their pages
_MADV_DONTNEED = 4  # Linux


def prepare_hf_dataset(data: DataConfig, out: str) -> str:
    """Tokenize the documents of `data.dataset` into `out`/{train,val}.bin and meta.json; returns `out`."""
    num_proc = data.num_proc or _cores()
    docs, source = load_documents(data, num_proc)
    os.makedirs(out, exist_ok=True)
    forget_meta(out)  # from here on the old set is gone: its documents may be what changed
    remove_work_folders(out)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as work:
        splits = split_documents(docs, data.val_fraction, data.dataset or "", work)
        train = splits["train"]
        tokenizer, extra = tok.for_dataset(
            data,
            chars=lambda: char_vocabulary(splits, num_proc),
            train_texts=lambda: (batch["text"] for batch in train.iter(batch_size=1000)),
            length=len(train),
            trained_on=f"the train split: {len(train):,} documents of {source}",
        )
        dtype = token_dtype(tokenizer.vocab_size)
        tmp = {split: os.path.join(work, f"{split}.bin") for split in SPLITS}
        counts: dict[str, int] = {}
        text_bytes: dict[str, int] = {}
        for split in SPLITS:
            counts[split], text_bytes[split] = write_tokens(
                splits[split], tmp[split], _worker_spec(tokenizer), dtype, num_proc, f"tokenizing {split}"
            )
            log.info("%s: %s tokens from %s documents", split, f"{counts[split]:,}", f"{len(splits[split]):,}")
        meta = tokenized_meta(
            tokenizer,
            counts,
            text_bytes,
            source,
            val_texts=lambda: (text for batch in splits["val"].iter(batch_size=64) for text in batch["text"]),
            subset=data.subset,
            text_column=data.text_column,
            documents={split: len(splits[split]) for split in SPLITS},
            split={"val_fraction": data.val_fraction, "seed": SPLIT_SEED},
            document_end=DOC_SEPARATOR if tokenizer.eot_token is None else tok.EOT,
            fingerprint=getattr(docs, "_fingerprint", None),  # datasets' hash of the loaded data
            **extra,
        )
        if isinstance(tokenizer, tok.BPETokenizer):
            tokenizer.save(out)
        for split in SPLITS:  # the same file system: renames, not copies
            os.replace(tmp[split], os.path.join(out, f"{split}.bin"))
    finish_dataset(out, meta)
    return out


def _worker_spec(tokenizer: tok.Tokenizer) -> tuple:
    """What a worker process needs to rebuild `tokenizer` (a tuple pickles cheaply; a tiktoken encoding does not)."""
    if isinstance(tokenizer, tok.CharTokenizer):
        return ("char", tokenizer.chars)
    if isinstance(tokenizer, tok.BPETokenizer):
        return ("bpe", tokenizer.definition)
    return ("gpt2",)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
