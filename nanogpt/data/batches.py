"""Training and evaluation batches from memmapped token files: one per split, or many shards.

A batch is a pure function of (seed, step, micro-batch index): no loader state to save, exact resume,
and the same global batch whatever the number of processes or the split into accumulation steps.
"""

from __future__ import annotations

import numpy as np
import torch

from nanogpt.data.token_files import SPLITS, TokenFile, read_meta, split_files
from nanogpt.errors import UserError

MAX_OPEN = 128  # memory maps kept open per split (each holds a file descriptor)
_TRAIN, _EVAL = 0, 1  # streams of the seed sequence, so train and eval draws never overlap


class Batches:
    def __init__(
        self,
        path: str,
        block_size: int,
        batch_size: int,
        grad_accum: int,
        seed: int,
        device: torch.device,
        vocab_size: int | None = None,
    ):
        self.meta = read_meta(path)
        if vocab_size is not None and self.meta["vocab_size"] > vocab_size:
            raise UserError(
                f"the data set's vocabulary ({self.meta['vocab_size']}) is larger than the model's "
                f"(model.vocab_size={vocab_size}): raise model.vocab_size or leave it null"
            )
        # Each file mapped once: pages are read on demand and shared with the OS cache. A split in shards
        # reads as one sequence, so starts are drawn over all its tokens the same way as from one file.
        self.data = {s: Tokens(split_files(path, self.meta, s), self.meta["dtype"]) for s in SPLITS}
        for split, tokens in self.data.items():
            if len(tokens) <= block_size:
                raise UserError(
                    f"the {split} split of {path} has {len(tokens)} tokens, not more than one block "
                    f"(model.block_size={block_size}): lower model.block_size or give more text"
                )
            _check_token_range(tokens, self.meta["vocab_size"])
        self.block_size, self.batch_size, self.grad_accum = block_size, batch_size, grad_accum
        self.seed, self.device = seed, device
        self._step: int | None = None
        self._starts = np.empty(0, dtype=np.int64)

    def train(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch `micro` (0 .. grad_accum-1, counted over all processes) of optimizer step `step`."""
        if step != self._step:
            # The whole global batch of the step is drawn at once, then sliced: how it is split across
            # processes and accumulation steps does not change which sequences it holds.
            rng = np.random.default_rng([self.seed, _TRAIN, step])
            high = len(self.data["train"]) - self.block_size
            self._starts = rng.integers(0, high, size=self.batch_size * self.grad_accum)
            self._step = step
        rows = self._starts[micro * self.batch_size : (micro + 1) * self.batch_size]
        return self._gather("train", rows)

    def eval(self, split: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k-th evaluation batch of a split: the same at every evaluation, so losses compare."""
        rng = np.random.default_rng([self.seed, _EVAL, SPLITS.index(split), k])
        rows = rng.integers(0, len(self.data[split]) - self.block_size, size=self.batch_size)
        return self._gather(split, rows)

    def _gather(self, split: str, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        buf = torch.from_numpy(self.data[split].windows(starts, self.block_size + 1))
        x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()
        if self.device.type == "cuda":
            # Pinned memory lets the copy run asynchronously with the GPU's work.
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


class Tokens:
    """One split's tokens as a single sequence over its files (one .bin, or shards). A window that crosses from
    one shard into the next is read from both, so a sharded set and the same tokens in one file give the same
    windows, hence bit-identical training. Each file is memory-mapped when first read (at most MAX_OPEN at a
    time), so memory stays flat however many shards there are."""

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


def _check_token_range(tokens: Tokens, vocab_size: int, limit: int = 2**28) -> None:
    """Every token id must index the embedding: out-of-range ids crash CUDA kernels with no useful message.
    Scanned in chunks (about 1 ms per million tokens); splits past `limit` tokens rely on meta.json."""
    found = tokens.max_token(limit)
    if found is not None and found[0] >= vocab_size:
        raise UserError(
            f"{found[1]} holds token id {found[0]}, beyond the vocabulary of {vocab_size}: "
            "the token files do not match meta.json; prepare the data set again with force=true"
        )
