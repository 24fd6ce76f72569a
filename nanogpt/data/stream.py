"""Data sets streamed from the Hugging Face hub into shards, resumably: FineWeb-Edu, FineWeb, or any data set
prepared with `data.streaming=true`.

The stream: the documents of the train split in the hub's order, read with `load_dataset(..., streaming=True)`
(no copy of the whole set in the Hugging Face cache), each tokenized with GPT-2's BPE and preceded by the
end-of-text token, as build-nanogpt's and llm.c's FineWeb scripts do, all concatenated into one token stream.
The split: the stream's first `data.val_tokens` tokens are val (100M by default: build-nanogpt's and llm.c's val
shard 000000, so val losses compare with theirs), the rest is train, up to `data.max_tokens`. Each split is cut
into llm.c-format shards of exactly `data.shard_tokens` tokens (the last one shorter): val_000000.bin, ...,
train_000000.bin, ... (nanogpt/data/batches.py reads them as one sequence).

Resumable: after each shard, progress.json records the shards written and where the stream stands (`datasets`'
iterator state at the start of the current batch of documents, and how many tokens of that batch are written).
A preparation killed at any moment and started again with the same settings continues after its last complete
shard and ends with the same bytes as one never interrupted. meta.json, written last, marks the set complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from nanogpt import tokenizer as tok
from nanogpt.config import DataConfig
from nanogpt.data import shard_writer as writing
from nanogpt.data.hf_datasets import open_stream
from nanogpt.data.token_files import finish_dataset

log = logging.getLogger(__name__)

BATCH_BYTES = 1 << 20  # text per batch of documents: a resume re-reads at most one batch
IN_FLIGHT = 4  # batches read and queued for tokenizing at a time: a few MB of text
DTYPE = np.dtype(np.uint16)  # GPT-2's 50257 ids


@dataclass
class Batch:
    state: dict | None  # datasets' iterator state before the batch's first document (None: the stream's start)
    texts: list[str]
    nbytes: list[int]  # UTF-8 bytes of each document


def prepare_stream(data: DataConfig, out: str) -> str:
    """Stream `data.dataset` into `out`: shards of both splits, then meta.json. Returns `out`."""
    ds = open_stream(data)
    state = writing.resume_or_start(out, settings(data))
    writing.check_free_disk(out, data, state.tokens_written, DTYPE.itemsize)
    writer = writing.ShardedWriter(out, data, state, DTYPE)
    if state.shard_count:
        log.info("resuming %s after %d shards (%s tokens)", out, state.shard_count, f"{state.tokens_written:,}")
    if state.stream is not None:
        ds.load_state_dict(state.stream)
    threads = data.num_proc or len(os.sched_getaffinity(0))
    bar = tqdm(
        total=writing.estimate_tokens(data),
        initial=state.tokens_written,
        unit="tok",
        unit_scale=True,
        dynamic_ncols=True,
        desc=f"preparing {data.name}",
        mininterval=1.0,
    )
    with Encoder(threads) as encoder, bar:
        batches = _batches(ds, data.text_column, state.stream) if not writer.done else iter(())
        for batch, tokens, doc_lens in encoder.pipeline(batches):
            before = writer.tokens_written
            writer.consume(batch.state, tokens, doc_lens, batch.nbytes)
            bar.update(writer.tokens_written - before)
            rate = writer.session_bytes / max(bar.format_dict["elapsed"], 1e-9) / 1e6
            bar.set_postfix_str(f"{writer.documents:,} docs, {rate:.1f} MB/s", refresh=False)
            if writer.done:
                break
    meta = writer.finish()
    name = f"{data.dataset}" + (f" ({data.subset})" if data.subset else "")
    meta.update(
        source=f"datasets: {name}, streamed",
        subset=data.subset,
        text_column=data.text_column,
        split={
            "val": f"the stream's first {data.val_tokens} tokens",
            "train": "the rest",
            "max_tokens": data.max_tokens,
        },
        document_start="<|endoftext|>",
    )
    finish_dataset(out, meta)
    writing.forget_progress(out)
    return out


def settings(data: DataConfig) -> dict:
    """What decides the bytes of the shards: a preparation resumes only under the same."""
    keys = ("dataset", "subset", "text_column", "tokenizer", "val_tokens", "max_tokens", "shard_tokens")
    return {k: getattr(data, k) for k in keys}


# ---- the stream ---------------------------------------------------------------------------------------------


def _batches(ds: Any, column: str, start: dict | None) -> Iterator[Batch]:
    """Batches of about BATCH_BYTES of text, each with the iterator state before it (`start` for the first: the
    state the stream was resumed from, None at its beginning), read ahead by a thread (reading the Parquet files
    holds the GIL only briefly, while the tokenizing threads run beside it)."""
    out: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def read() -> None:
        it = iter(ds)
        try:
            state = start
            texts: list[str] = []
            nbytes: list[int] = []
            for row in it:
                text = row[column] or ""
                texts.append(text)
                nbytes.append(len(text.encode("utf-8")))
                if sum(nbytes) >= BATCH_BYTES:
                    out.put(Batch(state, texts, nbytes))
                    if stop.is_set():
                        return
                    state, texts, nbytes = ds.state_dict(), [], []
            if texts:
                out.put(Batch(state, texts, nbytes))
            out.put(None)
        except BaseException as e:  # raised again in the main thread
            out.put(e)
        finally:
            it.close()

    reader = threading.Thread(target=read, daemon=True, name="stream-reader")
    reader.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)


# ---- tokenizing ----------------------------------------------------------------------------------------------


class Encoder:
    """GPT-2's BPE in threads: tiktoken's Rust encoder releases the GIL, and `encode_to_numpy` hands back the
    ids without building a Python int per token. Each document becomes [<|endoftext|>, its tokens...]."""

    def __init__(self, threads: int):
        self.enc = tok.gpt2_encoding()
        self.eot = np.array([self.enc.eot_token], dtype=np.uint32)
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="tokenize")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of `texts`, each after an end-of-text, and the number of tokens of each (its end-of-text
        included). `encode_to_numpy` with nothing disallowed treats `<|endoftext|>` in the text as plain text,
        as `encode_ordinary` does."""
        parts: list[np.ndarray] = []
        for text in texts:
            parts += (self.eot, self.enc.encode_to_numpy(text, disallowed_special=()))
        lens = np.array([len(p) for p in parts[1::2]], dtype=np.int64) + 1
        return (np.concatenate(parts).astype(DTYPE) if parts else np.empty(0, DTYPE)), lens

    def submit(self, texts: list[str]) -> list[Future]:
        step = max(1, -(-len(texts) // self.threads))
        return [self.pool.submit(self.encode, texts[i : i + step]) for i in range(0, len(texts), step)]

    def pipeline(self, batches: Iterator[Batch]) -> Iterator[tuple[Batch, np.ndarray, np.ndarray]]:
        """(batch, its tokens, its documents' token counts) in order, the next IN_FLIGHT - 1 batches queued for
        the tokenizing threads while the caller writes the current one, so they never wait on it."""
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, self.submit(batch.texts)))
            if len(pending) >= IN_FLIGHT:
                yield self._join(*pending.popleft())
        while pending:
            yield self._join(*pending.popleft())

    @staticmethod
    def _join(batch: Batch, futures: list[Future]) -> tuple[Batch, np.ndarray, np.ndarray]:
        results = [f.result() for f in futures]
        if not results:
            return batch, np.empty(0, DTYPE), np.empty(0, np.int64)
        return batch, np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])

    def __enter__(self) -> Encoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
