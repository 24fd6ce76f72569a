"""One token stream written into a data set's shards, resumably (the writing half of nanogpt/data/stream.py).

The stream's first `val_tokens` tokens go to val, the rest to train (up to `max_tokens`), each split cut into
llm.c-format shards of exactly `shard_tokens` tokens, named `<split>_<index:06d>.bin`. A shard is written under
a `.partial` name and renamed when complete; then progress.json is replaced (written whole, by rename) with the
list of complete shards and where the stream stands: the source's iterator state at the start of the batch
being written, and how many of that batch's tokens are already in shards. Whatever moment a kill comes, the
folder holds complete shards that progress.json lists (and at most one complete shard and one .partial file it
does not, which a restart removes and writes again), so a restart continues from the last listed shard.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

import numpy as np

from nanogpt import tokenizer as tok
from nanogpt.atomic import atomic_write
from nanogpt.config import DataConfig
from nanogpt.data import llmc_shards as llmc
from nanogpt.errors import UserError

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
SPLITS = ("val", "train")  # in stream order
SIZED_BY_NAME = ("HuggingFaceFW/fineweb-edu", "HuggingFaceFW/fineweb")  # their samples' names give their sizes
_SHARD_NAME = re.compile(r"^(train|val)_\d{6}\.bin$")


@dataclass
class State:
    """Where a preparation stands: what progress.json holds."""

    settings: dict
    shards: dict[str, list[dict]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    text_bytes: int = 0
    stream: dict | None = None  # the source's iterator state at the start of the batch being written
    skip: int = 0  # tokens of that batch already in shards

    def tokens(self, split: str) -> int:
        return sum(s["tokens"] for s in self.shards[split])

    @property
    def tokens_written(self) -> int:
        return sum(self.tokens(s) for s in SPLITS)

    @property
    def shard_count(self) -> int:
        return sum(len(self.shards[s]) for s in SPLITS)


def resume_or_start(out: str, settings: dict) -> State:
    """The state progress.json records if it was written with the same settings and its shards are intact;
    else a fresh start (with a warning saying why). Reads only: the folder is changed by ShardedWriter."""
    path = os.path.join(out, PROGRESS)
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return State(settings)
    except (OSError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s): starting over", path, e)
        return State(settings)
    if saved.get("settings") != settings:
        log.warning("%s was prepared in part with other settings (%s): starting over", out, saved.get("settings"))
        return State(settings)
    state = State(settings, saved["shards"], saved["documents"], saved["text_bytes"], saved["stream"], saved["skip"])
    for split in SPLITS:
        for shard in state.shards[split]:
            try:
                intact = llmc.read_header(os.path.join(out, shard["file"])).tokens == shard["tokens"]
            except (UserError, OSError):
                intact = False
            if not intact:
                log.warning("%s is missing or damaged: starting over", os.path.join(out, shard["file"]))
                return State(settings)
    return state


class ShardedWriter:
    """Takes the stream's tokens batch by batch and cuts them into the shards of both splits."""

    def __init__(self, out: str, data: DataConfig, state: State, dtype: np.dtype):
        self.out, self.state, self.dtype = out, state, dtype
        self.val_tokens, self.max_tokens, self.shard_tokens = data.val_tokens, data.max_tokens, data.shard_tokens
        self._tidy(out)
        self.file: llmc.ShardFile | None = None
        self.file_split = ""
        self.skip = state.skip  # tokens at the start of the stream (as resumed) that are already written
        self.session_bytes = 0  # text read by this process, for the MB/s of the progress bar
        self.done = self.max_tokens is not None and state.tokens("train") >= self.max_tokens

    def _tidy(self, out: str) -> None:
        """Before writing: no meta.json (the set is incomplete until the end), no .partial or temporary files,
        no shards that progress.json does not list."""
        os.makedirs(out, exist_ok=True)
        listed = {s["file"] for split in SPLITS for s in self.state.shards[split]}
        for name in os.listdir(out):
            stray = name.endswith(".partial") or ".tmp-" in name or (_SHARD_NAME.match(name) and name not in listed)
            if stray or name == "meta.json" or (name == PROGRESS and not listed):
                os.remove(os.path.join(out, name))

    @property
    def tokens_written(self) -> int:
        return self.state.tokens_written + (self.file.tokens if self.file else 0)

    @property
    def documents(self) -> int:
        return sum(self.state.documents.values())

    def consume(self, stream: dict | None, tokens: np.ndarray, doc_lens: np.ndarray, doc_bytes: list[int]) -> None:
        """Write a batch's tokens: `stream` is the iterator state before the batch, `doc_lens` the number of
        tokens of each of its documents and `doc_bytes` their UTF-8 bytes."""
        pos = min(self.skip, len(tokens))
        self.skip -= pos
        doc_starts = np.cumsum(doc_lens) - doc_lens
        while pos < len(tokens) and not self.done:
            split = "val" if self.state.tokens("val") < self.val_tokens else "train"
            left = self._left(split)
            take = min(self.shard_tokens - (self.file.tokens if self.file else 0), left, len(tokens) - pos)
            if self.file is None:
                name = f"{split}_{len(self.state.shards[split]):06d}.bin"
                self.file = llmc.ShardFile(os.path.join(self.out, name), llmc.version_for(self.dtype))
                self.file_split = split
            self.file.append(tokens[pos : pos + take])
            # Documents (and their text) count where their first token, the end-of-text, is written.
            first, last = np.searchsorted(doc_starts, [pos, pos + take])
            self.state.documents[split] += int(last - first)
            nbytes = sum(doc_bytes[first:last])
            self.state.text_bytes += nbytes
            self.session_bytes += nbytes
            pos += take
            if self.file.tokens == self.shard_tokens or take == left:
                self._close_shard()
                self._save_progress(stream, pos)
            self.done = self.max_tokens is not None and self.state.tokens("train") >= self.max_tokens

    def _left(self, split: str) -> int | float:
        if split == "val":
            return self.val_tokens - self.state.tokens("val")
        return float("inf") if self.max_tokens is None else self.max_tokens - self.state.tokens("train")

    def _close_shard(self) -> None:
        assert self.file is not None
        self.file.close()
        self.state.shards[self.file_split].append(
            {"file": os.path.basename(self.file.path), "tokens": self.file.tokens}
        )
        self.file = None

    def _save_progress(self, stream: dict | None, pos: int) -> None:
        """Record the shards closed so far and that the stream resumes `pos` tokens after `stream`."""
        self.state.stream, self.state.skip = stream, pos
        keys = ("settings", "shards", "documents", "text_bytes", "stream", "skip")
        atomic_write(os.path.join(self.out, PROGRESS), json.dumps({k: getattr(self.state, k) for k in keys}).encode())

    def finish(self) -> dict:
        """Close the last shard; meta.json's token fields. A stream too short for both splits is one line,
        and the shards written so far are removed."""
        if self.file is not None:  # the last shard is not recorded: a kill before meta.json writes it again
            self._close_shard()
        val, train = self.state.tokens("val"), self.state.tokens("train")
        if val < self.val_tokens or train == 0:
            discard(self.out)
            raise UserError(
                f"the stream ended after {val + train:,} tokens, leaving nothing to train on after the first "
                f"data.val_tokens={self.val_tokens:,} for validation: lower data.val_tokens"
            )
        gpt2 = tok.GPT2Tokenizer()
        return {
            "tokenizer": gpt2.to_meta(),
            "vocab_size": gpt2.vocab_size,
            "dtype": self.dtype.name,
            "train_tokens": train,
            "val_tokens": val,
            "shards": {"format": "llm.c", **{s: self.state.shards[s] for s in ("train", "val")}},
            "documents": {s: self.state.documents[s] for s in ("train", "val")},
            "bytes_per_token": round(self.state.text_bytes / (train + val), 4),
        }


def discard(out: str) -> None:
    """Remove an unfinished preparation's shards and progress.json."""
    for name in os.listdir(out):
        if name == PROGRESS or _SHARD_NAME.match(name) or name.endswith(".partial"):
            os.remove(os.path.join(out, name))


def forget_progress(out: str) -> None:
    """After meta.json: progress.json, and anything a kill left behind, are no longer needed."""
    for path in [os.path.join(out, PROGRESS), *glob.glob(os.path.join(glob.escape(out), "*.partial"))]:
        if os.path.exists(path):
            os.remove(path)


def estimate_tokens(data: DataConfig) -> int | None:
    """The set's size in tokens, where it can be told before reading it: data.max_tokens, or the size of a
    sample of the hub's FineWeb sets, in its name (sample-10BT: 10B GPT-2 tokens)."""
    if data.max_tokens is not None:
        return data.val_tokens + data.max_tokens
    m = re.fullmatch(r"sample-(\d+)BT", data.subset or "")
    return int(m.group(1)) * 10**9 if m and data.dataset in SIZED_BY_NAME else None


def check_free_disk(out: str, data: DataConfig, written: int, itemsize: int) -> None:
    """Refuse to start when the disk cannot hold what is left to write (by the estimate above)."""
    total = estimate_tokens(data)
    if total is None:
        log.info("the size of %s cannot be told in advance: no free-disk check", data.name)
        return
    shards = -(-total // data.shard_tokens) + 1
    need = max(0, total - written) * itemsize + shards * llmc.HEADER_BYTES
    where = out
    while not os.path.exists(where):
        where = os.path.dirname(os.path.abspath(where))
    free = shutil.disk_usage(where).free
    if need > free:
        raise UserError(
            f"preparing {data.name} needs about {need / 1e9:.1f} GB more ({total:,} tokens of {itemsize} bytes) but "
            f"{where} has {free / 1e9:.1f} GB free: free some space, set paths.data_dir to a larger disk, or "
            "prepare fewer tokens with data.max_tokens=N"
        )
    log.info("%s: about %.1f GB to write, %.1f GB free", data.name, need / 1e9, free / 1e9)
