"""Generate text from a run's checkpoint or an OpenAI GPT-2, printing each sample as it is written."""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

import torch

from nanogpt import device as devices
from nanogpt import tokenizer as tok
from nanogpt.config import DeviceConfig, SampleConfig
from nanogpt.errors import UserError
from nanogpt.from_nanogpt import is_checkpoint as is_nanogpt_checkpoint
from nanogpt.kernels import decode_layout
from nanogpt.model import GPT
from nanogpt.runs import load_run


def load_for_sampling(cfg: SampleConfig) -> tuple[GPT, tok.Tokenizer, int]:
    """The model, its tokenizer, and the size of the real vocabulary (padding ids are never sampled)."""
    if cfg.run is not None or is_nanogpt_checkpoint(cfg.init_from):
        run = load_run(cfg.run or cfg.init_from, cfg.checkpoint)  # type: ignore[arg-type]
        return run.model, run.tokenizer, run.vocab_size
    from nanogpt.pretrained import from_huggingface

    model = from_huggingface(cfg.init_from)
    own = os.path.join(cfg.init_from, tok.BPETokenizer.FILE)
    if model.config.vocab_size != 50257 and os.path.isfile(own):  # a model export.py wrote with its trained BPE
        with open(own, encoding="utf-8") as f:
            return model, tok.BPETokenizer(f.read()), model.config.vocab_size
    return model, tok.GPT2Tokenizer(), tok.GPT2_VOCAB


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = start[len("FILE:") :]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise UserError(f"prompt file {path!r} does not exist: give start=FILE:<existing file>") from None
        except UnicodeDecodeError:
            raise UserError(f"prompt file {path!r} is not UTF-8 text") from None
    return start


def generation_precision(cfg: DeviceConfig) -> devices.Precision:
    """The device and dtype to generate in: the training choice, except fp32 on CPUs unless bf16 is asked for.
    Decoding one token at a time reads every weight once, and gains little or nothing from the CPU's bf16 dot
    products as training does (docs/BENCHMARKS.md, Sampling)."""
    precision = devices.resolve(cfg)
    if precision.device.type == "cpu" and cfg.dtype == "auto":
        return dataclasses.replace(precision, dtype=torch.float32)
    return precision


def generation_weights(model: GPT, precision: devices.Precision) -> Callable[[], contextlib.AbstractContextManager]:
    """Cast `model` for generation in `precision`; returns the context to generate in (autocast, or none)."""
    if precision.dtype != torch.bfloat16:
        return precision.autocast
    # Generation reads every weight once per token: weights stored in bf16 halve that traffic, where autocast
    # would read the fp32 weights and write bf16 copies at every step. bf16 has fp32's range: no overflow.
    # The parameters only: the buffers (the rotary cos/sin tables) stay fp32, which apply_rotary computes in; in
    # bf16 they would be off by up to 2e-3 (8 bits of mantissa), a rotation error at every position.
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
    return contextlib.nullcontext


def sample(cfg: SampleConfig, out: TextIO = sys.stdout) -> list[str]:
    """Print `num_samples` continuations of the prompt, token by token; returns them."""
    precision = generation_precision(cfg.device)
    model, tokenizer, vocab = load_for_sampling(cfg)
    if cfg.top_k is not None and cfg.top_k > vocab:
        raise UserError(f"top_k={cfg.top_k} is larger than the vocabulary ({vocab}): use top_k<={vocab}")
    model.eval().to(precision.device)
    autocast = generation_weights(model, precision)
    ids = tokenizer.encode(read_prompt(cfg.start))
    if not ids:
        if tokenizer.eot_token is None:
            raise UserError("start is empty: give a prompt, e.g. start='ROMEO:'")
        ids = [tokenizer.eot_token]  # GPT-2 starts a fresh document after end-of-text
    x = torch.tensor([ids], dtype=torch.long, device=precision.device)
    generator = torch.Generator(device=precision.device).manual_seed(cfg.seed)
    samples = []
    for _ in range(cfg.num_samples):
        out.write(tokenizer.decode(ids))
        with autocast(), decode_layout(model):  # the layout inside autocast: it reads the dtype autocast sets
            stream = model.generate_stream(
                x,
                cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                vocab_limit=vocab,
                generator=generator,
            )
            text = print_stream((int(t) for t in stream), tokenizer, cfg.stop, out)
        out.write("\n---------------\n")
        out.flush()
        samples.append(text)
    return samples


def print_stream(tokens: Iterator[int], tokenizer: tok.Tokenizer, stop: str | None, out: TextIO) -> str:
    """Print the text of `tokens` as they come and return it, up to `stop` if it appears.

    A byte-level BPE token can end inside a multi-byte character (a Chinese character is 3 bytes, an emoji 4, and
    a token may hold only some of them): bytes go through an incremental UTF-8 decoder, which holds back an
    incomplete character until its last byte arrives, so only whole characters are ever printed. Text that may
    be the start of `stop` is held back too, until it turns out to be the stop string or not."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, shown = "", 0
    for token in tokens:
        text += decoder.decode(tokenizer.token_bytes([token]))
        if stop:
            at = text.find(stop, max(0, shown - len(stop)))
            if at >= 0:
                text = text[:at]
                break
        ready = len(text) - _stop_prefix(text, stop)
        if ready > shown:
            out.write(text[shown:ready])
            out.flush()
            shown = ready
    else:
        text += decoder.decode(b"", final=True)  # bytes that never completed a character: U+FFFD, as decode() does
    out.write(text[shown:])
    return text


def _stop_prefix(text: str, stop: str | None) -> int:
    """The length of the longest end of `text` that begins `stop` (and so may grow into it)."""
    for k in range(min(len(stop or ""), len(text) + 1) - 1, 0, -1):
        if text.endswith(stop[:k]):  # type: ignore[index]
            return k
    return 0
