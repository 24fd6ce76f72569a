"""A trained run's model, loaded back: what sampling, export and evaluation start from."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from nanogpt import checkpoint
from nanogpt import tokenizer as tok
from nanogpt.config import ModelConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT


@dataclass
class LoadedRun:
    model: GPT  # on the CPU, in fp32, in train mode as built
    vocab_size: int  # the data's real vocabulary: ids past it are padding, never to be sampled
    checkpoint: str  # the checkpoint folder the weights came from
    info: dict[str, Any]  # that checkpoint's info.json

    @functools.cached_property
    def tokenizer(self) -> tok.Tokenizer:
        """Built when first asked for: GPT-2's BPE takes a moment to load, and export does not need it."""
        return tok.from_meta({"tokenizer": self.info["tokenizer"]})


def find_checkpoint(run_dir: str, which: str = "best") -> str:
    """A run's `which` (best or latest) checkpoint, else its latest; a missing run or checkpoint is one line."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run={run_dir!r} does not exist: give a run dir written by run.py (outputs/<experiment>/...)")
    ckpt = checkpoint.find(run_dir, which) or checkpoint.find(run_dir, "latest")
    if ckpt is None:
        raise UserError(f"run={run_dir!r} holds no checkpoint (checkpoints/{which}): train it first")
    return ckpt


def load_run(run_dir: str, which: str = "best") -> LoadedRun:
    """The model and tokenizer of a run's `best` (else `latest`) checkpoint."""
    ckpt = find_checkpoint(run_dir, which)
    info = checkpoint.load_info(ckpt)
    model = GPT(ModelConfig(**info["model"]))
    checkpoint.load_weights(model, ckpt)
    return LoadedRun(model, info["data_vocab_size"], ckpt, info)
