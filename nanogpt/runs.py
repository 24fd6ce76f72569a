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
from nanogpt.checkpoint import file_sha256
from nanogpt.config import ModelConfig, RunConfig
from nanogpt.errors import UserError
from nanogpt.from_nanogpt import is_checkpoint as is_nanogpt_checkpoint
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
    """The model and tokenizer of a run's `best` (else `latest`) checkpoint, or of a nanoGPT checkpoint; a LoRA
    run's adapters merged into the base they point at (a plain GPT, as fast as the base)."""
    if is_nanogpt_checkpoint(run_dir):
        from nanogpt.from_nanogpt.checkpoint import load_run as load_nanogpt_run

        return load_nanogpt_run(run_dir)
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
    from nanogpt.data.token_files import read_meta

    meta = read_meta(data_path)
    if not cfg.data.dir:  # a folder given as it is brings its own tokenizer
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
    model, info = _initial(cfg, meta, data_path)
    if cfg.finetune.method == "lora":
        info["finetune"] = lora.record(cfg.finetune, info["init_from"], model)
        model = lora.attach(model, cfg.finetune)
        log.info(
            "finetune=lora: %s trainable adapter weights over %s frozen ones",
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
            f"{sum(p.numel() for p in model.parameters() if not p.requires_grad):,}",
        )
    return model, info


def _initial(cfg: RunConfig, meta: dict, data_path: str) -> tuple[GPT, dict[str, Any]]:
    """The model a new run starts from: scratch, one of our runs, a nanoGPT checkpoint, or OpenAI's GPT-2 (or a
    Hugging Face folder)."""
    if cfg.init_from == "scratch":
        vocab = cfg.model.vocab_size or _pad(meta["vocab_size"], cfg.model.pad_vocab_multiple)
        model = GPT(dataclasses.replace(cfg.model, vocab_size=vocab))
    elif is_run_dir(cfg.init_from):
        return _from_run(cfg, meta)
    elif is_nanogpt_checkpoint(cfg.init_from):
        return _from_nanogpt(cfg, meta, data_path)
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
    weights = os.path.join(ckpt, checkpoint.WEIGHTS)
    origin = {"run": os.path.abspath(run_dir), "checkpoint": os.path.abspath(ckpt), "iter": info.get("iter")}
    origin["sha256"] = file_sha256(weights)
    log.info(
        "init_from=%s: %s (iter %s, sha256 %s...), shape and tokenizer from that run",
        run_dir, ckpt, origin["iter"], origin["sha256"][:12],
    )  # fmt: skip
    return _finetuned(model, cfg, meta, origin)


def _finetuned(model: GPT, cfg: RunConfig, meta: dict, origin: dict) -> tuple[GPT, dict[str, Any]]:
    """A model another run trained, cropped to this run's context, and the facts this run's checkpoints record."""
    if cfg.model.block_size < model.config.block_size:
        model.crop_block_size(cfg.model.block_size)
    info = {
        "model": dataclasses.asdict(model.config),
        "tokenizer": meta["tokenizer"],
        "data_vocab_size": meta["vocab_size"],
        "init_from": origin,
    }
    return model, info


def _from_nanogpt(cfg: RunConfig, meta: dict, data_path: str) -> tuple[GPT, dict[str, Any]]:
    """A nanoGPT checkpoint to finetune: its shape and weights; the data must speak its tokenizer."""
    from nanogpt.from_nanogpt.checkpoint import load, tokenizer_of

    ckpt = load(cfg.init_from)
    chars = meta["tokenizer"].get("kind") == "char"
    spec, vocab = tokenizer_of(ckpt, otherwise=(meta["tokenizer"], meta["vocab_size"]) if chars else None)
    if spec != meta["tokenizer"] and spec["kind"] == "char":  # the lists of characters are too long to print
        raise UserError(
            f"the data at {data_path} has a vocabulary of {meta['vocab_size']} ({meta['tokenizer']['kind']}), "
            f"but init_from={cfg.init_from} was trained on other characters ({vocab}): finetune on its own data "
            "set (data.dir=<its nanoGPT data folder>)"
        )
    _check_tokenizer_extends(spec, meta, ckpt.model.vocab_size, cfg.init_from, cfg.data.name)
    _warn_unused_shape(cfg.model, ckpt.model, cfg.init_from)
    model = ckpt.build(dropout=cfg.model.dropout)
    origin = {"nanogpt": os.path.abspath(ckpt.path), "iter": ckpt.iter_num, "sha256": file_sha256(ckpt.path)}
    log.info(
        "init_from=%s: nanoGPT's checkpoint at iter %d (sha256 %s...)", ckpt.path, ckpt.iter_num, origin["sha256"][:12]
    )
    return _finetuned(model, cfg, meta, origin)


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
