"""Log-likelihoods of continuations, many sequences per forward: the engine under HellaSwag and the harness adapter.

A row is a context followed by a continuation; only the continuation's tokens are scored, each predicted from
everything before it (the context's last token predicts the continuation's first). Rows of a batch are padded
on the right: attention is causal, so padding after a row's last token changes none of its logits, and the padded
positions are never scored. The output layer runs at the scored positions only (`GPT.forward(logits_at=...)`):
with GPT-2's 50k vocabulary it is most of a small model's forward, and a continuation is a fraction of its row.
A row longer than the block keeps its last `block_size + 1` tokens (the forward sees `block_size` of them); callers
count those crops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from nanogpt.distributed import Dist
from nanogpt.tokenizer import Tokenizer


@dataclass
class Row:
    tokens: list[int]  # context then continuation, at most block_size + 1 of them
    n_cont: int  # the last n_cont tokens are scored


@dataclass
class Scorer:
    """A model ready to score text: the module to call, its tokenizer, and where and how to run it."""

    model: torch.nn.Module  # a GPT, called as model(idx, logits_at=...); under FSDP, the sharded one (a collective)
    tokenizer: Tokenizer
    block_size: int
    vocab_size: int  # the real vocabulary: ids beyond it (padding for speed) are left out of the softmax
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    batch_size: int = 32  # rows per forward
    dist: Dist = field(default_factory=Dist)
    dropped_chars: int = 0  # characters a character-level vocabulary could not encode (see encode)
    _stoi: dict[str, int] | None = field(default=None, repr=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. A character-level model drops the characters its vocabulary lacks (HellaSwag
        has digits and brackets Shakespeare never uses) and counts them, instead of refusing the whole task."""
        chars = getattr(self.tokenizer, "chars", None)
        if chars is None:
            return self.tokenizer.encode(text)
        if self._stoi is None:
            self._stoi = {c: i for i, c in enumerate(chars)}
        ids = [self._stoi[c] for c in text if c in self._stoi]
        self.dropped_chars += len(text) - len(ids)
        return ids

    def row(self, context: list[int], continuation: list[int]) -> tuple[Row, bool]:
        """The row scoring `continuation` after `context`, cropped on the left to fit the block; and whether
        it was cropped."""
        tokens = context + continuation
        cropped = len(tokens) > self.block_size + 1
        if cropped:
            tokens = tokens[-(self.block_size + 1) :]
        return Row(tokens, min(len(continuation), len(tokens) - 1)), cropped

    @torch.no_grad()
    def score(self, rows: Sequence[Row]) -> tuple[list[float], list[bool]]:
        """One forward over `rows`: each row's summed log-probability of its continuation, and whether greedy
        decoding would have produced exactly that continuation."""
        lengths = [len(r.tokens) - 1 for r in rows]
        width = max(1, *lengths)
        x = torch.tensor([r.tokens[:-1] + [0] * (width - n) for r, n in zip(rows, lengths, strict=True)])
        # The scored positions of every row, flattened: (row, position, target token).
        row_idx, pos_idx, targets = [], [], []
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            row_idx += [i] * r.n_cont
            pos_idx += range(n - r.n_cont, n)
            targets += r.tokens[len(r.tokens) - r.n_cont :]
        ri = torch.tensor(row_idx, dtype=torch.long).to(self.device)
        pi = torch.tensor(pos_idx, dtype=torch.long).to(self.device)
        tgt = torch.tensor(targets, dtype=torch.long).to(self.device)
        with self.autocast():
            logits, _ = self.model(x.to(self.device), logits_at=(ri, pi))  # the scored positions' only
        picked = logits[:, : self.vocab_size].float()
        logp = picked.log_softmax(dim=-1).gather(1, tgt[:, None]).squeeze(1)
        miss = picked.argmax(-1) != tgt
        # Summed in float64 on the CPU (MPS has no float64): a few numbers per row.
        ri, logp, miss = ri.cpu(), logp.cpu().double(), miss.cpu().double()
        sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, ri, logp)
        misses = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, ri, miss)
        return sums.tolist(), (misses == 0).tolist()


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout) for the duration, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
