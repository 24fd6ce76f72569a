"""The decoding engine: continuous batching on one background thread.

Requests arrive at any time and wait in a queue. Between steps the engine admits as many as have free rows (a
request with n choices needs n): each prompt is prefilled alone through the model's forward, its cache copied
into one row per choice, and its first tokens drawn. Each step then runs one forward over every active sequence
(`batched.decode_step`), draws each row's next token with its own settings and generator, and sends each
choice's new text to its request. Finished and cancelled sequences leave before the next step; the last rows
move into the gaps, so the active sequences always fill rows 0..B-1.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from nanogpt.kernels import compute_dtype, decode_layout
from nanogpt.model import GPT, sample_next
from nanogpt.serve.batched import BatchedCache, decode_step, prefill
from nanogpt.serve.text import TextStream
from nanogpt.tokenizer import Tokenizer

log = logging.getLogger("nanogpt")


@dataclass(frozen=True)
class Sampling:
    """How one request's tokens are drawn and when its choices end."""

    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()  # texts that end a choice (not sent)
    stop_ids: tuple[int, ...] = ()  # tokens that end a choice (end-of-text, the chat template's <|end|>)
    seed: int | None = None  # choice i draws from a generator seeded with seed + i; None: a fresh seed


@dataclass(frozen=True)
class Event:
    """New text of one choice; `finish_reason` is set on its last event: stop, length, error (the engine failed),
    or shutdown (cut off by `Engine.cut_off`)."""

    choice: int
    text: str
    tokens: int  # tokens this choice has generated so far
    finish_reason: str | None = None


class QueueFull(Exception):
    """The queue holds `max_queue` requests already."""


class ShuttingDown(Exception):
    """`Engine.cut_off` was called: the server is going away and takes no more requests."""


class Request:
    """A prompt to continue n times; `emit` is called from the engine's thread with each Event."""

    def __init__(self, prompt: list[int], sampling: Sampling, n: int, emit: Callable[[Event], None]):
        self.prompt, self.sampling, self.n, self.emit = prompt, sampling, n, emit
        self.cancelled = False  # set by the client's side (a disconnect); the engine drops it before its next step

    def cancel(self) -> None:
        self.cancelled = True


class _Sequence:
    """One choice being generated: row i of the cache holds the i-th active one."""

    def __init__(self, request: Request, choice: int, tokenizer: Tokenizer, device: torch.device, length: int):
        self.request, self.choice = request, choice
        seed = request.sampling.seed
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed + choice)
        self.text = TextStream(tokenizer, request.sampling.stop)
        self.length = length  # tokens in the cache
        self.generated = 0
        self.last = -1  # the token to feed next
        self.done = False


class Engine:
    """Decodes the queued requests together; `start`, then `submit` from any thread, `stop` at the end."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, vocab_limit: int, max_batch: int, max_queue: int):
        self.model, self.tokenizer, self.vocab_limit = model, tokenizer, vocab_limit
        self.max_batch, self.max_queue = max_batch, max_queue
        self.device = next(model.parameters()).device
        self.active: list[_Sequence] = []
        self.queue: deque[Request] = deque()
        self.wake = threading.Condition()
        self.running = False
        self.closing = False  # set by cut_off: end what is in hand, take nothing more
        self.thread = threading.Thread(target=self._run, name="nanogpt-engine", daemon=True)
        self.steps = 0  # batched forwards so far (the tests read it)

    def start(self, autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        """Decode under `autocast` (sampling.generation_weights's context); the cache holds what it computes."""
        self.autocast = autocast
        with autocast():
            self.dtype = compute_dtype(self.model)
        self.cache = BatchedCache(self.model.config, self.max_batch, self.device, self.dtype)
        self.running = True
        self.thread.start()

    def stop(self) -> None:
        """Finish the step in hand and end the thread; what is still queued or active gets no more events."""
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread.is_alive():
            self.thread.join()

    def cut_off(self) -> None:
        """End every active and queued request at the next step (finish_reason "shutdown"), and refuse new ones:
        the end of a shutdown's grace period, so that each client still learns how its request ended."""
        with self.wake:
            self.closing = True
            self.wake.notify()

    def submit(self, request: Request) -> None:
        with self.wake:
            if self.closing:
                raise ShuttingDown
            fits_now = not self.queue and len(self.active) + request.n <= self.max_batch
            if len(self.queue) >= self.max_queue and not fits_now:
                raise QueueFull
            self.queue.append(request)
            self.wake.notify()

    def load(self) -> tuple[int, int]:
        """(active sequences, queued requests)."""
        return len(self.active), len(self.queue)

    def _run(self) -> None:
        # Grad mode and autocast are per thread: set here, not by the caller; the layout inside autocast.
        with torch.inference_mode(), self.autocast(), decode_layout(self.model):
            while True:
                with self.wake:
                    while self.running and not self.queue and not self.active:
                        self.wake.wait()
                    if not self.running:
                        return
                    if self.closing:
                        self._end_all("shutdown")
                        continue
                    admitted = self._take_admissible()
                try:
                    for request in admitted:
                        self._prefill(request)
                    self._drop_finished()
                    if self.active:
                        self._step()
                        self._drop_finished()
                except Exception:  # a bug: fail the requests in hand rather than hang their clients
                    log.exception("the decoding engine failed a step")
                    self._fail(admitted)

    def _take_admissible(self) -> list[Request]:
        """Queued requests, in order, while their choices fit in the free rows (cancelled ones are dropped)."""
        taken, used = [], len(self.active)
        while self.queue and (self.queue[0].cancelled or used + self.queue[0].n <= self.max_batch):
            request = self.queue.popleft()
            if not request.cancelled:
                taken.append(request)
                used += request.n
        return taken

    def _prefill(self, request: Request) -> None:
        logits, cache = prefill(self.model, request.prompt, self.device, self.dtype)
        for choice in range(request.n):
            seq = _Sequence(request, choice, self.tokenizer, self.device, cache.pos)
            self.cache.put(len(self.active), cache)
            self.active.append(seq)
            self._advance(seq, self._draw(seq, logits))

    def _step(self) -> None:
        idx = torch.tensor([s.last for s in self.active], dtype=torch.long, device=self.device)
        pos = torch.tensor([s.length for s in self.active], dtype=torch.long, device=self.device)
        logits = decode_step(self.model, self.cache, idx, pos)
        self.steps += 1
        for i, seq in enumerate(self.active):
            seq.length += 1
            if not seq.request.cancelled:
                self._advance(seq, self._draw(seq, logits[i : i + 1]))

    def _draw(self, seq: _Sequence, logits: torch.Tensor) -> int:
        s = seq.request.sampling
        token = sample_next(logits.float(), s.temperature, s.top_k, s.top_p, self.vocab_limit, seq.generator)
        return int(token)

    def _advance(self, seq: _Sequence, token: int) -> None:
        """Send what `token` adds to the choice's text, and end the choice if it is done."""
        seq.generated += 1
        s = seq.request.sampling
        if token in s.stop_ids:
            return self._finish(seq, seq.text.finish(), "stop")
        text, stopped = seq.text.push(token)
        if stopped:
            return self._finish(seq, text, "stop")
        # A token the cache has no room for cannot be fed back: the block is the context.
        if seq.generated >= s.max_tokens or seq.length >= self.model.config.block_size:
            return self._finish(seq, text + seq.text.finish(), "length")
        seq.last = token
        if text:
            seq.request.emit(Event(seq.choice, text, seq.generated))

    def _finish(self, seq: _Sequence, text: str, reason: str) -> None:
        seq.done = True
        seq.request.emit(Event(seq.choice, text, seq.generated, reason))

    def _drop_finished(self) -> None:
        """Keep the live sequences in rows 0..B-1, in order (each moves down, never over one not yet moved)."""
        live = [s for s in self.active if not s.done and not s.request.cancelled]
        if len(live) == len(self.active):
            return
        rows = {id(s): i for i, s in enumerate(self.active)}
        for i, seq in enumerate(live):
            if rows[id(seq)] != i:
                self.cache.move(rows[id(seq)], i, seq.length)
        self.active = live

    def _end_all(self, reason: str) -> None:
        """Finish every choice not yet finished, active or queued, with `reason`; the batch and queue are left empty."""
        for seq in self.active:
            if not seq.done and not seq.request.cancelled:
                seq.request.emit(Event(seq.choice, "", seq.generated, reason))
        for request in (r for r in self.queue if not r.cancelled):
            for choice in range(request.n):
                request.emit(Event(choice, "", 0, reason))
        self.active = []
        self.queue.clear()

    def _fail(self, admitted: list[Request]) -> None:
        failed = {id(s.request): s.request for s in self.active} | {id(r): r for r in admitted}
        for request in failed.values():
            for choice in range(request.n):
                request.emit(Event(choice, "", 0, "error"))
            request.cancel()
        self.active = []
