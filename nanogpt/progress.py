"""What the loop shows while it trains: the training speed between log steps, and on a terminal a progress bar.

The bar (tqdm: loss, ms/iter, tokens/s, ETA) is rank 0's, and only when stderr is a terminal; log lines still come
every `train.log_interval` steps, printed above it. Piped or redirected output (a file, a Slurm log) gets the
log lines alone.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any


class Throughput:
    """Tokens per second of training between two log steps, evaluation time left out."""

    def __init__(self, tokens_per_step: int, first_iter: int):
        self.tokens_per_step = tokens_per_step
        self._since, self._iter = time.perf_counter(), first_iter

    def pause(self, seconds: float) -> None:
        self._since += seconds

    def tokens_per_s(self, next_iter: int) -> float:
        now = time.perf_counter()
        rate = self.tokens_per_step * (next_iter - self._iter) / max(now - self._since, 1e-9)
        self._since, self._iter = now, next_iter
        return rate


class ProgressBar:
    """A bar over the run's steps, advanced at every step, its numbers refreshed at log steps (reading the loss
    back at every step would stall a GPU). Does nothing unless `shown` and stderr is a terminal."""

    def __init__(self, total: int, done: int, shown: bool):
        self._bar: Any = None
        self._stack = contextlib.ExitStack()
        if not (shown and sys.stderr.isatty()):
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        # Log lines go through tqdm.write while the bar is up, so that they print above it rather than through it.
        self._stack.enter_context(logging_redirect_tqdm())
        self._bar = self._stack.enter_context(
            tqdm(total=total, initial=done, unit="it", dynamic_ncols=True, leave=False, file=sys.stderr)
        )

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def show(self, loss: float, ms_per_iter: float, tokens_per_s: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}, {ms_per_iter:.1f} ms/iter, {tokens_per_s:,.0f} tokens/s")

    def close(self) -> None:
        self._stack.close()
