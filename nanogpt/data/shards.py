"""Where a data set's tokens live, and the one reader of them.

A data set is meta.json plus token files, in one of two layouts:

- one file per split, `train.bin` and `val.bin`: bare tokens (nanoGPT's layout; the small sets);
- shards: `meta["shards"]` lists each split's files in order, `{"file": ..., "tokens": n}`, each an llm.c-format
  shard (nanogpt/data/llmc.py: a 1024-byte header, then the tokens), in the data set's folder or in
  `meta["shards"]["dir"]` (a folder of pre-tokenized shards used where it is).

`Tokens` reads a split as one sequence, the concatenation of its files, whichever the layout: a window that
crosses from one shard into the next is read from both, so a sharded set and the same tokens in one file give
the same windows, hence bit-identical training. Each file is memory-mapped once, when first read (at most
`MAX_OPEN` at a time), so memory stays flat however many shards there are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from nanogpt.data import llmc
from nanogpt.errors import UserError

MAX_OPEN = 128  # memory maps kept open per split (each holds a file descriptor)
SPLIT_NAMES = ("train", "val")


@dataclass(frozen=True)
class TokenFile:
    path: str
    tokens: int
    offset: int  # bytes before the first token


def split_files(path: str, meta: dict, split: str) -> list[TokenFile]:
    """The files holding `split`'s tokens, in order."""
    shards = meta.get("shards")
    if shards is None:
        return [TokenFile(os.path.join(path, f"{split}.bin"), meta[f"{split}_tokens"], 0)]
    root = shards.get("dir") or path
    return [TokenFile(os.path.join(root, s["file"]), s["tokens"], llmc.HEADER_BYTES) for s in shards[split]]


def check_files(path: str, meta: dict) -> None:
    """Every token file exists with the size meta.json implies (a stat each, no reading)."""
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLIT_NAMES:
        files = split_files(path, meta, split)
        for f in files:
            want = f.offset + f.tokens * itemsize
            have = os.path.getsize(f.path) if os.path.exists(f.path) else -1
            if have != want:
                raise UserError(
                    f"{f.path} has {have} bytes but meta.json says {want} ({f.tokens} tokens): the token files "
                    "are truncated or stale; prepare the data set again with force=true"
                )
        if sum(f.tokens for f in files) != meta[f"{split}_tokens"]:
            raise UserError(
                f"{os.path.join(path, 'meta.json')} lists {split} shards of {sum(f.tokens for f in files)} tokens "
                f"but says {meta[f'{split}_tokens']}: prepare the data set again with force=true"
            )


class Tokens:
    """One split's tokens as a single sequence over its files."""

    def __init__(self, files: list[TokenFile], dtype: str | np.dtype):
        self.files = files
        self.dtype = np.dtype(dtype)
        sizes = np.array([f.tokens for f in files], dtype=np.int64)
        self.ends = np.cumsum(sizes)  # global end offset of each file
        self._first, self._sizes = (self.ends - sizes).tolist(), sizes.tolist()  # Python ints: fast per row
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def file_tokens(self, i: int) -> np.ndarray:
        """File `i`'s tokens, memory-mapped on first use (the oldest map is let go past MAX_OPEN)."""
        arr = self._maps.get(i)
        if arr is None:
            f = self.files[i]
            arr = np.memmap(f.path, dtype=self.dtype, mode="r", offset=f.offset, shape=(f.tokens,))
            if len(self._maps) >= MAX_OPEN:
                del self._maps[next(iter(self._maps))]
            self._maps[i] = arr
        return arr

    def windows(self, starts: np.ndarray, n: int, dtype: np.dtype | type = np.int64) -> np.ndarray:
        """Rows of `n` consecutive tokens starting at each of `starts` (global offsets), as `dtype`."""
        out = np.empty((len(starts), n), dtype=dtype)
        which = np.searchsorted(self.ends, starts, side="right").tolist()
        maps = self._maps
        for row, (start, i) in enumerate(zip(starts.tolist(), which, strict=True)):
            local = start - self._first[i]
            if local + n <= self._sizes[i]:  # the usual case: inside one file
                arr = maps.get(i)
                out[row] = (self.file_tokens(i) if arr is None else arr)[local : local + n]
                continue
            filled = 0
            while filled < n:  # across a file boundary: the end of one, the start of the next
                take = min(n - filled, self._sizes[i] - local)
                if take:
                    out[row, filled : filled + take] = self.file_tokens(i)[local : local + take]
                filled, local, i = filled + take, 0, i + 1
        return out

    def max_token(self, limit: int) -> tuple[int, str] | None:
        """The largest token id among the first `limit` tokens and the file holding it; None if the split
        is longer than `limit` (its files are then trusted as meta.json describes them)."""
        if len(self) > limit:
            return None
        top, where = -1, ""
        for i, f in enumerate(self.files):
            if not f.tokens:
                continue
            arr = self.file_tokens(i)
            for j in range(0, len(arr), 2**24):  # in chunks: about 1 ms per million tokens
                m = int(arr[j : j + 2**24].max())
                if m > top:
                    top, where = m, f.path
        return top, where
