"""Generate text from a run's checkpoint or an OpenAI GPT-2, printing each sample as it is written."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from typing import TextIO

import torch

from nanogpt import device as devices
from nanogpt import tokenizer as tok
from nanogpt.config import DeviceConfig, SampleConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.runs import load_run


def load_for_sampling(cfg: SampleConfig) -> tuple[GPT, tok.Tokenizer, int]:
    """The model, its tokenizer, and the size of the real vocabulary (padding ids are never sampled)."""
    if cfg.run is not None:
        run = load_run(cfg.run, cfg.checkpoint)
        return run.model, run.tokenizer, run.vocab_size
    from nanogpt.pretrained import from_huggingface

    return from_huggingface(cfg.init_from), tok.GPT2Tokenizer(), 50257


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
    Decoding one token at a time does not gain from AMX as training does: bf16 weights measured 19-37% slower
    for the 4x128 and 6x384 character models and only 10% faster at GPT-2 124M (docs/BENCHMARKS.md)."""
    prec = devices.resolve(cfg)
    if prec.device.type == "cpu" and cfg.dtype == "auto":
        return dataclasses.replace(prec, dtype=torch.float32)
    return prec


def generation_weights(model: GPT, prec: devices.Precision) -> Callable[[], contextlib.AbstractContextManager]:
    """Cast `model` for generation in `prec`; returns the context to generate in (autocast, or none)."""
    if prec.dtype != torch.bfloat16:
        return prec.autocast
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
    prec = generation_precision(cfg.device)
    model, tokenizer, vocab = load_for_sampling(cfg)
    if cfg.top_k is not None and cfg.top_k > vocab:
        raise UserError(f"top_k={cfg.top_k} is larger than the vocabulary ({vocab}): use top_k<={vocab}")
    model.eval().to(prec.device)
    autocast = generation_weights(model, prec)
    ids = tokenizer.encode(read_prompt(cfg.start))
    if not ids:
        if tokenizer.eot_token is None:
            raise UserError("start is empty: give a prompt, e.g. start='ROMEO:'")
        ids = [tokenizer.eot_token]  # GPT-2 starts a fresh document after end-of-text
    x = torch.tensor([ids], dtype=torch.long, device=prec.device)
    generator = torch.Generator(device=prec.device).manual_seed(cfg.seed)
    samples = []
    for _ in range(cfg.num_samples):
        new: list[int] = []
        shown = ""
        out.write(tokenizer.decode(ids))
        with autocast():
            stream = model.generate_stream(
                x,
                cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                vocab_limit=vocab,
                generator=generator,
            )
            text = ""
            for token in stream:
                new.append(int(token))
                text = tokenizer.decode(new)
                stopped = cfg.stop is not None and cfg.stop in text
                if stopped:
                    text = text[: text.index(cfg.stop)]
                # Print whole characters only: a BPE token can end inside a multi-byte one.
                if stopped or not text.endswith("\ufffd"):
                    out.write(text[len(shown) :])
                    out.flush()
                    shown = text
                if stopped:
                    break
        out.write(text[len(shown) :] + "\n---------------\n")
        out.flush()
        samples.append(text)
    return samples
