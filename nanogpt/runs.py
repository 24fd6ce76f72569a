"""A run's model: built for training (from scratch, from OpenAI's GPT-2, from another run, or from the run's own
checkpoint), and loaded back from a finished run for sampling and evaluation, or exported as a Hugging Face GPT-2."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

from nanogpt import checkpoint, lora
from nanogpt import tokenizer as tok
from nanogpt.config import ModelConfig, RunConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.rundir import is_run_dir

log = logging.getLogger("nanogpt")


@dataclass
class LoadedRun:
    model: GPT  # on the CPU, in fp32, in train mode as built
    vocab_size: int  # the data's real vocabulary: ids past it are padding, never to be sampled
    checkpoint: str  # the checkpoint folder the weights came from
    info: dict[str, Any]  # that checkpoint's info.json
    run_dir: str  # a trained BPE's tokenizer.json is there

    @functools.cached_property
    def tokenizer(self) -> tok.Tokenizer:
        """Built when first asked for: GPT-2's BPE takes a moment to load, and export does not need it."""
        return tok.from_meta({"tokenizer": self.info["tokenizer"]}, self.run_dir)


def find_checkpoint(run_dir: str, which: str = "best") -> str:
    """A run's `which` (best or latest) checkpoint, else its latest; a missing run or checkpoint is one line."""
    if not os.path.isdir(run_dir):
        raise UserError(f"run={run_dir!r} does not exist: give a run dir written by run.py (outputs/<experiment>/...)")
    ckpt = checkpoint.find(run_dir, which) or checkpoint.find(run_dir, "latest")
    if ckpt is None:
        raise UserError(f"run={run_dir!r} holds no checkpoint (checkpoints/{which}): train it first")
    return ckpt


def load_run(run_dir: str, which: str = "best") -> LoadedRun:
    """The model and tokenizer of a run's `best` (else `latest`) checkpoint; a LoRA run's adapters merged into the
    base they point at (a plain GPT, as fast as the base)."""
    ckpt = find_checkpoint(run_dir, which)
    info = checkpoint.load_info(ckpt)
    if lora.holds_adapter(info):
        model = lora.merge(lora.load_adapted(info, ckpt))
    else:
        model = GPT(ModelConfig(**info["model"]))
        checkpoint.load_weights(model, ckpt)
    return LoadedRun(model, info["data_vocab_size"], ckpt, info, run_dir)


def export_run(run_dir: str, out_dir: str | None = None, which: str = "best") -> str:
    """Write a run's `best` (else `latest`) checkpoint as a Hugging Face GPT-2 folder; returns the folder,
    `<run dir>/huggingface` unless `out_dir` is given."""
    from nanogpt.pretrained import to_huggingface  # transformers costs seconds to import

    run = load_run(run_dir, which)
    ckpt, info, vocab = run.checkpoint, run.info, run.vocab_size
    out = out_dir or os.path.join(run_dir, "huggingface")
    to_huggingface(run.model, vocab, out, info["tokenizer"], run_dir)
    log.info(
        "exported %s (iter %s) to %s: GPT2LMHeadModel.from_pretrained(%r) loads it", ckpt, info.get("iter"), out, out
    )
    if lora.holds_adapter(info):
        log.info("LoRA adapters merged into the base weights (%s)", info["finetune"]["base"])
    if info["model"]["vocab_size"] != vocab:
        log.info("vocabulary padding trimmed: %d -> %d ids", info["model"]["vocab_size"], vocab)
    if not info["model"]["bias"]:
        log.info("trained without biases: the exported biases are zeros (the same function)")
    if info["tokenizer"].get("kind") == "gpt2":
        log.info("with GPT-2's tokenizer: AutoTokenizer.from_pretrained(%r) loads it", out)
    elif info["tokenizer"].get("kind") == "bpe":
        log.info("with its trained BPE tokenizer: AutoTokenizer.from_pretrained(%r) loads it", out)
    else:
        log.warning(
            "character-level model: transformers has no character tokenizer, so none is saved; %s maps each id "
            "to its character: encode and decode text with it yourself",
            os.path.join(out, "char_vocab.json"),
        )
    return out


def build_model(cfg: RunConfig, ckpt: str | None, data_path: str) -> tuple[GPT, dict[str, Any]]:
    """The model to train and the facts its checkpoints record (shape, tokenizer, vocabulary); with
    finetune=lora, adapters over the frozen model, and the pointer to that base."""
    # Here, not at the top: sampling and export load a run without the data modules (and what they import).
    from nanogpt.data.prepare import check_prepared_as_asked
    from nanogpt.data.tokens import read_meta

    meta = read_meta(data_path)
    check_prepared_as_asked(cfg.data, meta, data_path)
    if ckpt is not None:
        info = checkpoint.load_info(ckpt)
        saved = ModelConfig(**info["model"])
        _check_same_model(cfg, saved, info, meta, ckpt)
        if lora.holds_adapter(info):
            lora.check_resumed(cfg.finetune, info, ckpt)
            return lora.load_adapted(info, ckpt, dropout=cfg.model.dropout), info
        model = GPT(dataclasses.replace(saved, dropout=cfg.model.dropout))
        checkpoint.load_weights(model, ckpt)
        return model, info
    model, info = _from_run(cfg, meta) if is_run_dir(cfg.init_from) else _fresh(cfg, meta)
    if cfg.finetune.method == "lora":
        info["finetune"] = lora.record(cfg.finetune, info["init_from"], model)
        model = lora.attach(model, cfg.finetune)
        log.info(
            "finetune=lora: %s trainable adapter weights over %s frozen ones",
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
            f"{sum(p.numel() for p in model.parameters() if not p.requires_grad):,}",
        )
    return model, info


def _fresh(cfg: RunConfig, meta: dict) -> tuple[GPT, dict[str, Any]]:
    """A model from scratch, or OpenAI's GPT-2 (or a Hugging Face folder)."""
    if cfg.init_from == "scratch":
        vocab = cfg.model.vocab_size or _pad(meta["vocab_size"], cfg.model.pad_vocab_multiple)
        model = GPT(dataclasses.replace(cfg.model, vocab_size=vocab))
    else:
        model = _from_pretrained(cfg, meta)
    info = {
        "model": dataclasses.asdict(model.config),
        "tokenizer": meta["tokenizer"],
        "data_vocab_size": meta["vocab_size"],
        "init_from": cfg.init_from,
    }
    return model, info


def _from_pretrained(cfg: RunConfig, meta: dict) -> GPT:
    """OpenAI's GPT-2 (or a Hugging Face GPT-2 folder), to finetune on data in GPT-2's BPE."""
    from nanogpt.pretrained import from_huggingface  # transformers costs seconds to import

    if meta["tokenizer"].get("kind") != "gpt2":
        raise UserError(
            f"init_from={cfg.init_from} needs data in GPT-2's BPE, but {cfg.data.name!r} is tokenized with "
            f"{meta['tokenizer'].get('kind')!r}: use data=shakespeare, or data.tokenizer=gpt2 for your text"
        )
    log.info(
        "init_from=%s: the shape comes from the checkpoint; model.block_size=%d and model.dropout=%s still "
        "apply (model=gpt2 keeps GPT-2's 1024 and 0.0)",
        cfg.init_from,
        cfg.model.block_size,
        cfg.model.dropout,
    )
    return from_huggingface(cfg.init_from, dropout=cfg.model.dropout, block_size=cfg.model.block_size)


def _from_run(cfg: RunConfig, meta: dict) -> tuple[GPT, dict[str, Any]]:
    """A run of ours to finetune: its shape, tokenizer and weights, and where they came from."""
    run_dir = cfg.init_from
    ckpt = find_checkpoint(run_dir, cfg.init_from_checkpoint)
    info = checkpoint.load_info(ckpt)
    saved = ModelConfig(**info["model"])
    _check_tokenizer_extends(info["tokenizer"], meta, saved.vocab_size, run_dir, cfg.data.name)
    _warn_unused_shape(cfg.model, saved, run_dir)
    model = GPT(dataclasses.replace(saved, dropout=cfg.model.dropout))
    checkpoint.load_weights(model, ckpt)
    if cfg.model.block_size < saved.block_size:
        model.crop_block_size(cfg.model.block_size)
    weights = os.path.join(ckpt, checkpoint.WEIGHTS)
    origin = {"run": os.path.abspath(run_dir), "checkpoint": os.path.abspath(ckpt), "iter": info.get("iter")}
    origin["sha256"] = checkpoint.file_sha256(weights)
    log.info(
        "init_from=%s: %s (iter %s, sha256 %s...), shape and tokenizer from that run",
        run_dir, ckpt, origin["iter"], origin["sha256"][:12],
    )  # fmt: skip
    new_info = {
        "model": dataclasses.asdict(model.config),
        "tokenizer": meta["tokenizer"],
        "data_vocab_size": meta["vocab_size"],
        "init_from": origin,
    }
    return model, new_info


def _check_tokenizer_extends(run_tok: dict, meta: dict, model_vocab: int, run_dir: str, data_name: str) -> None:
    """The data must speak the run's tokenizer, or that tokenizer with the chat markers added above it."""
    data_tok = meta["tokenizer"]
    chat_extension = run_tok == {"kind": "gpt2"} and data_tok == {"kind": "gpt2", "chat": True}
    if data_tok != run_tok and not chat_extension:
        raise UserError(
            f"data {data_name!r} is tokenized as {data_tok}, but init_from={run_dir} was trained on {run_tok}: "
            "prepare the data with the run's tokenizer (data.tokenizer=...), or finetune another run"
        )
    if meta["vocab_size"] > model_vocab:
        raise UserError(
            f"data {data_name!r} has {meta['vocab_size']} token ids but init_from={run_dir} has only {model_vocab} "
            "embeddings: prepare it without the added tokens, or train a run with a larger model.vocab_size"
        )


def _warn_unused_shape(asked: ModelConfig, saved: ModelConfig, run_dir: str) -> None:
    """Model fields set away from their defaults that the run's own shape overrides: said, never silently dropped."""
    default = dataclasses.asdict(ModelConfig())
    for key, value in dataclasses.asdict(asked).items():
        if key in ("dropout", "block_size", "pad_vocab_multiple") or value == default[key]:
            continue
        if value != getattr(saved, key):
            log.warning(
                "model.%s=%s is not used: init_from=%s brings its own shape (model.%s=%s)",
                key, value, run_dir, key, getattr(saved, key),
            )  # fmt: skip
    if asked.block_size > saved.block_size and asked.block_size != default["block_size"]:
        log.warning(
            "model.block_size=%d is longer than init_from=%s was trained for: it keeps its %d",
            asked.block_size, run_dir, saved.block_size,
        )  # fmt: skip


def _check_same_model(cfg: RunConfig, saved: ModelConfig, info: dict, meta: dict, ckpt: str) -> None:
    """A checkpoint only resumes under the model shape and tokenizer it was trained with."""
    if info["tokenizer"] != meta["tokenizer"]:
        raise UserError(
            f"the data set {cfg.data.name!r} is tokenized differently from checkpoint {ckpt}: "
            "resume with the data the run was trained on"
        )
    if cfg.init_from != "scratch":
        return  # the shape came from the pretrained model, not from cfg.model
    asked = dataclasses.asdict(cfg.model)
    for key, value in dataclasses.asdict(saved).items():
        if key in ("dropout", "pad_vocab_multiple") or (key == "vocab_size" and asked[key] is None):
            continue
        if asked[key] != value:
            raise UserError(
                f"model.{key}={asked[key]} but checkpoint {ckpt} was trained with model.{key}={value}: "
                "resume with the model config the run was trained with"
            )


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
