"""Training and evaluation batches from memmapped token files: one per split, or many shards.

A batch is a pure function of (seed, step, micro-batch index): no loader state to save, exact resume,
and the same global batch whatever the number of processes or the split into accumulation steps.
"""

from __future__ import annotations

import numpy as np
import torch

from nanogpt.data.shards import Tokens, split_files
from nanogpt.data.tokens import SPLITS, read_meta
from nanogpt.errors import UserError

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


def _check_token_range(tokens: Tokens, vocab_size: int, limit: int = 2**28) -> None:
    """Every token id must index the embedding: out-of-range ids crash CUDA kernels with no useful message.
    Scanned in chunks (about 1 ms per million tokens); splits past `limit` tokens rely on meta.json."""
    found = tokens.max_token(limit)
    if found is not None and found[0] >= vocab_size:
        raise UserError(
            f"{found[1]} holds token id {found[0]}, beyond the vocabulary of {vocab_size}: "
            "the token files do not match meta.json; prepare the data set again with force=true"
        )
