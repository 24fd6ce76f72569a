"""The checks a config's types cannot express: ranges, combinations, and the one kind of data source a `DataConfig`
describes. Each failure is a UserError naming the key and what to do."""

from __future__ import annotations

import math
import os
from typing import Any

from nanogpt.config import (
    ACTIVATIONS,
    BPE_MIN_VOCAB,
    PRETRAINED,
    TOKENIZERS,
    ChatConfig,
    DataConfig,
    DeviceConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    OptimConfig,
    PrepareConfig,
    RunConfig,
    SampleConfig,
    SamplingConfig,
    ServeConfig,
    TrainConfig,
)
from nanogpt.errors import UserError
from nanogpt.rundir import is_run_dir


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate(cfg: Any) -> None:
    """Range checks that types cannot express; each failure names the key and what to do."""
    if isinstance(cfg, RunConfig):
        _check_model(cfg.model)
        _check_modern(cfg)
        _check_length(cfg)
        _check_train(cfg.train, cfg.optim)
        _check_optim(cfg.optim)
        _check(cfg.logger.name in ("none", "wandb"), f"logger.name={cfg.logger.name!r}: use none or wandb")
        _check_device(cfg.device)
        _check_data(cfg.data)
        _check_tasks(cfg)
        _check_finetune(cfg)
        _check(
            cfg.init_from_checkpoint in ("best", "latest"),
            f"init_from_checkpoint={cfg.init_from_checkpoint!r}: use best or latest",
        )
    elif isinstance(cfg, PrepareConfig):
        _check_data(cfg.data)
    elif isinstance(cfg, SampleConfig):
        _check_sample(cfg)
        _check_device(cfg.device)
    elif isinstance(cfg, ServeConfig):
        _check_serve(cfg)
        _check_device(cfg.device)
    elif isinstance(cfg, ChatConfig):
        _check(cfg.run is not None, "give run=<run dir> to chat with (a run finetuned on conversations)")
        _check(cfg.checkpoint in ("best", "latest"), f"checkpoint={cfg.checkpoint!r}: use best or latest")
        _check(cfg.prompt is None or bool(cfg.prompt.strip()), "prompt is empty: give prompt='your message'")
        _check_sampling(cfg)
        _check_device(cfg.device)
    elif isinstance(cfg, EvalConfig):
        _check_tasks(cfg)
    elif isinstance(cfg, ExportConfig):
        _check(
            (cfg.run is None) != (cfg.init_from is None),
            "give run=<run dir> (or init_from=<nanoGPT ckpt.pt>) to export (out=<folder>, else <run dir>/huggingface)",
        )
        _check(cfg.checkpoint in ("best", "latest"), f"checkpoint={cfg.checkpoint!r}: use best or latest")


def _check_finetune(cfg: RunConfig) -> None:
    """LoRA's settings; whether its targets exist is for the model to say (nanogpt/lora.py)."""
    f = cfg.finetune
    _check(f.method in ("full", "lora"), f"finetune.method={f.method!r}: use full or lora (finetune=lora)")
    if f.method == "full":
        return
    _check(f.rank > 0, f"finetune.rank={f.rank} must be > 0")
    _check(f.alpha > 0, f"finetune.alpha={f.alpha} must be > 0")
    _check(0.0 <= f.dropout < 1.0, f"finetune.dropout={f.dropout} must be in [0, 1)")
    _check(bool(f.targets), "finetune.targets=[] adapts nothing: give some of c_attn, c_proj, c_fc, lm_head")
    _check(
        cfg.init_from != "scratch",
        "finetune=lora trains adapters over a trained model: give init_from=<run dir | gpt2... | Hugging Face dir>",
    )
    _check(
        cfg.train.parallel == "ddp",
        "finetune=lora keeps the base weights frozen and whole on every process: use train.parallel=ddp",
    )


def _check_model(m: ModelConfig) -> None:
    _check(m.n_layer > 0, f"model.n_layer={m.n_layer} must be > 0")
    _check(m.n_head > 0, f"model.n_head={m.n_head} must be > 0")
    _check(
        m.n_embd > 0 and m.n_embd % m.n_head == 0,
        f"model.n_embd={m.n_embd} must be a positive multiple of model.n_head={m.n_head}",
    )
    _check(m.block_size > 0, f"model.block_size={m.block_size} must be > 0")
    _check(m.vocab_size is None or m.vocab_size > 0, f"model.vocab_size={m.vocab_size} must be > 0")
    _check(m.pad_vocab_multiple > 0, f"model.pad_vocab_multiple={m.pad_vocab_multiple} must be > 0")
    _check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")


def _check_train(t: TrainConfig, o: OptimConfig) -> None:
    _check(t.batch_size > 0, f"train.batch_size={t.batch_size} must be > 0")
    _check(t.grad_accum > 0, f"train.grad_accum={t.grad_accum} must be > 0")
    _check(t.eval_interval > 0, f"train.eval_interval={t.eval_interval} must be > 0")
    _check(t.eval_iters > 0, f"train.eval_iters={t.eval_iters} must be > 0")
    _check(t.log_interval > 0, f"train.log_interval={t.log_interval} must be > 0")
    _check(t.keep_last >= 1, f"train.keep_last={t.keep_last} must be >= 1")
    _check(t.parallel in ("ddp", "fsdp"), f"train.parallel={t.parallel!r}: use ddp or fsdp")
    _check(
        not (t.parallel == "fsdp" and o.name == "muon"),
        "optim.name=muon orthogonalises whole matrices, which FSDP shards: use train.parallel=ddp with Muon",
    )


def _check_optim(o: OptimConfig) -> None:
    _check(o.name in ("adamw", "muon"), f"optim.name={o.name!r} is not an optimizer we have: use adamw or muon")
    _check(o.lr >= 0, f"optim.lr={o.lr} must be >= 0")
    _check(0 <= o.min_lr <= max(o.lr, 0), f"optim.min_lr={o.min_lr} must be in [0, optim.lr={o.lr}]")
    _check(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0")
    _check(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, f"optim.beta1/beta2={o.beta1}/{o.beta2} must be in [0, 1)")
    _check(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
    _check(o.warmup_iters >= 0, f"optim.warmup_iters={o.warmup_iters} must be >= 0")
    _check(
        o.lr_decay_iters is None or o.lr_decay_iters >= o.warmup_iters,
        f"optim.lr_decay_iters={o.lr_decay_iters} must be >= optim.warmup_iters={o.warmup_iters}",
    )


def _check_sample(cfg: SampleConfig) -> None:
    _check(
        (cfg.run is None) != (cfg.init_from is None),
        "give exactly one of run=<run dir> or init_from=<gpt2|gpt2-medium|gpt2-large|gpt2-xl|dir>",
    )
    _check(cfg.checkpoint in ("best", "latest"), f"checkpoint={cfg.checkpoint!r}: use best or latest")
    _check(cfg.num_samples > 0, f"num_samples={cfg.num_samples} must be > 0")
    _check_sampling(cfg)


def _check_sampling(cfg: SamplingConfig) -> None:
    """The sampling fields sample.py and chat.py share."""
    _check(cfg.max_new_tokens > 0, f"max_new_tokens={cfg.max_new_tokens} must be > 0")
    _check(cfg.temperature >= 0, f"temperature={cfg.temperature} must be >= 0 (0 is greedy)")
    _check(cfg.top_k is None or cfg.top_k > 0, f"top_k={cfg.top_k} must be > 0 (or null for all)")
    _check(cfg.top_p is None or 0 < cfg.top_p <= 1, f"top_p={cfg.top_p} must be in (0, 1]")


def _check_serve(cfg: ServeConfig) -> None:
    _check(
        (cfg.run is None) != (cfg.init_from is None),
        "give exactly one of run=<run dir> or init_from=<gpt2|gpt2-medium|gpt2-large|gpt2-xl|dir>",
    )
    _check(cfg.checkpoint in ("best", "latest"), f"checkpoint={cfg.checkpoint!r}: use best or latest")
    _check(0 <= cfg.port <= 65535, f"port={cfg.port} must be in 0..65535 (0: any free port)")
    _check(cfg.api_key is None or cfg.api_key.strip() != "", "api_key is empty: give a key, or leave it unset")
    _check(cfg.max_batch > 0, f"max_batch={cfg.max_batch} must be > 0")
    _check(cfg.max_queue >= 0, f"max_queue={cfg.max_queue} must be >= 0")
    _check(cfg.max_tokens is None or cfg.max_tokens > 0, f"max_tokens={cfg.max_tokens} must be > 0 (or null)")
    _check(cfg.max_body_bytes > 0, f"max_body_bytes={cfg.max_body_bytes} must be > 0")
    _check(cfg.shutdown_timeout >= 0, f"shutdown_timeout={cfg.shutdown_timeout} must be >= 0")


def _check_length(cfg: RunConfig) -> None:
    """The depth dial and the run's length: max_iters or one budget (nanogpt/sweeps/budgets.py derives the rest)."""
    m, t = cfg.model, cfg.train
    _check(m.aspect_ratio > 0, f"model.aspect_ratio={m.aspect_ratio} must be > 0")
    _check(m.head_dim > 0, f"model.head_dim={m.head_dim} must be > 0")
    if m.depth is not None:
        width = m.depth * m.aspect_ratio
        _check(m.depth > 0, f"model.depth={m.depth} must be > 0")
        if width % m.head_dim:
            step = m.head_dim // math.gcd(m.aspect_ratio, m.head_dim)  # depths giving whole heads: its multiples
            raise UserError(
                f"model.depth={m.depth} gives a width of {m.depth} x model.aspect_ratio={m.aspect_ratio} = {width}, "
                f"not a multiple of model.head_dim={m.head_dim}: use a depth that is a multiple of {step} "
                f"(or an aspect_ratio that is a multiple of {m.head_dim})"
            )
        _check(
            cfg.init_from == "scratch",
            f"model.depth sets the shape, but init_from={cfg.init_from} brings its own: drop model.depth",
        )
    _check(t.max_iters is None or t.max_iters >= 0, f"train.max_iters={t.max_iters} must be >= 0")
    budgets = [(f"train.{k}={v:g}", v) for k in ("flops_budget", "tokens_budget") if (v := getattr(t, k)) is not None]
    if not budgets:
        return
    name = budgets[0][0]
    for named, value in budgets:
        _check(value > 0, f"{named} must be > 0")
    if len(budgets) > 1:
        raise UserError(f"{name} and {budgets[1][0]} both set the run's length: keep one")
    _check(
        t.max_iters is None,
        f"train.max_iters={t.max_iters} and {name} both set the run's length: keep one "
        "(train.max_iters=null lets the budget decide)",
    )
    _check(
        cfg.init_from == "scratch",
        f"{name} sizes a run trained from scratch, but init_from={cfg.init_from}: set train.max_iters to finetune",
    )


def _check_modern(cfg: RunConfig) -> None:
    """The modern model options and Muon's settings."""
    m, o = cfg.model, cfg.optim
    _check(m.activation in ACTIVATIONS, f"model.activation={m.activation!r}: use {', '.join(ACTIVATIONS)}")
    head_dim = m.head_dim if m.depth is not None else m.n_embd // max(m.n_head, 1)
    _check(
        not m.rotary or head_dim % 2 == 0,
        f"model.rotary=true needs an even head size; it is {head_dim}: change model.n_embd, n_head or head_dim",
    )
    _check(m.rope_base > 0, f"model.rope_base={m.rope_base} must be > 0")
    _check(
        not (m.zero_init_head and m.tie_embeddings),
        "model.zero_init_head=true would zero the tied token embedding too: also set model.tie_embeddings=false",
    )
    modern = m.non_gpt2_options() + ["tie_embeddings=false"] * (not m.tie_embeddings)
    modern += [f"{k}=true" for k in ("zero_init_proj", "zero_init_head") if getattr(m, k)]
    # A GPT-2 (a name or a Hugging Face folder) cannot hold them; a path that is not there yet is a run dir to come
    # (a preset's documented two-step commands), refused by runs.py at start if it still is not there.
    gpt2 = cfg.init_from in PRETRAINED or os.path.isdir(cfg.init_from)
    if modern and cfg.init_from != "scratch" and gpt2 and not is_run_dir(cfg.init_from):
        raise UserError(
            f"model.{modern[0]} changes GPT-2's architecture, so init_from={cfg.init_from} cannot load into it: "
            "drop the model option or train from scratch"
        )
    _check(o.muon_lr >= 0, f"optim.muon_lr={o.muon_lr} must be >= 0")
    _check(0 <= o.muon_momentum < 1, f"optim.muon_momentum={o.muon_momentum} must be in [0, 1)")
    _check(o.muon_weight_decay >= 0, f"optim.muon_weight_decay={o.muon_weight_decay} must be >= 0")
    _check(1 <= o.muon_ns_steps < 100, f"optim.muon_ns_steps={o.muon_ns_steps} must be in [1, 99]")


def _check_tasks(cfg: RunConfig | EvalConfig) -> None:
    """Downstream evaluation settings: task names against the registry, sizes in range."""
    from nanogpt.eval import check_task_names  # no torch: the registry names modules, imported when run

    e = cfg.eval
    _check(e.batch_size >= 1, f"eval.batch_size={e.batch_size} must be >= 1")
    _check(e.max_gen_tokens >= 1, f"eval.max_gen_tokens={e.max_gen_tokens} must be >= 1")
    if isinstance(cfg, RunConfig):
        t = cfg.train
        check_task_names(t.eval_tasks, "train.eval_tasks")
        for key in ("eval_tasks_interval", "eval_tasks_limit"):
            value = getattr(t, key)
            _check(value is None or value > 0, f"train.{key}={value} must be > 0 (or null)")
        return
    _check(
        (cfg.run is None) != (cfg.init_from is None),
        "give exactly one of run=<run dir> or init_from=<gpt2|gpt2-medium|gpt2-large|gpt2-xl|dir>",
    )
    _check(cfg.checkpoint in ("best", "latest"), f"checkpoint={cfg.checkpoint!r}: use best or latest")
    _check(bool(cfg.tasks or cfg.harness), "nothing to evaluate: give tasks=[hellaswag] and/or harness=[<task>,...]")
    check_task_names(cfg.tasks, "tasks")
    _check(cfg.limit is None or cfg.limit > 0, f"limit={cfg.limit} must be > 0 (or null for all)")
    _check(cfg.num_fewshot is None or cfg.num_fewshot >= 0, f"num_fewshot={cfg.num_fewshot} must be >= 0")
    _check(
        not cfg.chat or bool(cfg.harness),
        "chat=true applies the chat template to harness tasks: give harness=[...] too (tasks=[chat_exact] always "
        "asks through the template)",
    )
    _check_device(cfg.device)


def _check_device(d: DeviceConfig) -> None:
    kinds = ("auto", "cpu", "cuda", "mps")
    _check(
        d.device.split(":")[0] in kinds,
        f"device.device={d.device!r} is not a device: use auto, cpu, cuda, cuda:N or mps",
    )
    _check(
        d.dtype in ("auto", "float32", "bfloat16", "float16"),
        f"device.dtype={d.dtype!r}: use auto, float32, bfloat16 or float16",
    )
    _check(d.peak_tflops is None or d.peak_tflops > 0, f"device.peak_tflops={d.peak_tflops} must be > 0 (or null)")
    _check(d.threads is None or d.threads >= 1, f"device.threads={d.threads} must be >= 1 (or null for a fair share)")


def _check_data(d: DataConfig) -> None:
    _check(
        d.dir is None
        or os.path.isfile(os.path.join(d.dir, "train.bin"))
        or os.path.isfile(os.path.join(d.dir, "meta.json")),
        f"data.dir={d.dir!r} holds no train.bin: give a prepared data folder (nanoGPT's data/<name>/, or one of ours)",
    )
    _check(d.tokenizer in TOKENIZERS, f"data.tokenizer={d.tokenizer!r}: use char, gpt2 or bpe")
    if d.tokenizer != "bpe":
        _check(
            d.vocab_size is None,
            f"data.vocab_size={d.vocab_size} only applies to data.tokenizer=bpe ({d.tokenizer} has a fixed "
            "vocabulary): drop it, or set data.tokenizer=bpe",
        )
    else:
        _check(
            d.vocab_size is not None, "data.tokenizer=bpe needs data.vocab_size=N, the vocabulary to train (e.g. 4096)"
        )
        _check(
            d.vocab_size >= BPE_MIN_VOCAB,
            f"data.vocab_size={d.vocab_size} is smaller than the 256 byte tokens plus <|endoftext|>: "
            f"use at least {BPE_MIN_VOCAB} (e.g. 4096)",
        )
        _check(
            d.vocab_size <= 2**32,
            f"data.vocab_size={d.vocab_size} is larger than token files hold (uint32, 2**32 ids): use a smaller one",
        )
    _check(0 < d.val_fraction < 1, f"data.val_fraction={d.val_fraction} must be in (0, 1)")
    _check(d.num_proc is None or d.num_proc > 0, f"data.num_proc={d.num_proc} must be > 0")
    _check(d.val_tokens > 0, f"data.val_tokens={d.val_tokens} must be > 0")
    _check(d.max_tokens is None or d.max_tokens > 0, f"data.max_tokens={d.max_tokens} must be > 0 (or null for all)")
    _check(d.shard_tokens > 0, f"data.shard_tokens={d.shard_tokens} must be > 0")
    _check(d.shards is None or d.shards > 0, f"data.shards={d.shards} must be > 0")
    data_kind(d)


DATA_KINDS = ("text", "hf", "stream", "shards", "chat")  # nanogpt/data/prepare.py prepares each with its own module


def data_kind(d: DataConfig) -> str:
    """The one kind of source `d` describes, its fields checked against it: pre-tokenized `shards` (data.shards_dir,
    or data.shards to download from data.dataset), a `stream` of data.dataset tokenized as it arrives
    (data.streaming=true), an `hf` data set read whole through `datasets` (data.dataset), else `text`
    (data.source); `chat` for conversations (data.format=messages|alpaca, from data.source or data.dataset)."""
    if d.format != "text":
        return _chat_kind(d)
    if d.shards_dir is not None or d.shards is not None:
        given = f"data.shards_dir={d.shards_dir!r}" if d.shards_dir is not None else f"data.shards={d.shards}"
        _check(
            d.source is None and not d.streaming,
            f"{given} is a pre-tokenized set: leave data.source and data.streaming unset",
        )
        _check(
            d.tokenizer != "bpe",
            "data.tokenizer=bpe trains a tokenizer on text, but data.shards/data.shards_dir are already GPT-2 tokens: "
            "use data.tokenizer=gpt2 with them, or prepare the text itself (data.dataset=...) with data.tokenizer=bpe",
        )
        _check(
            d.tokenizer == "gpt2",
            f"data.tokenizer={d.tokenizer} does not match the shards, which hold GPT-2 tokens: "
            "use data.tokenizer=gpt2 with pre-tokenized shards",
        )
        _check(
            d.shards_dir is not None or d.dataset is not None,
            "data.shards needs the hub repo to download from: give data.dataset=<owner/name>",
        )
        return "shards"
    if d.streaming:
        _check(
            d.dataset is not None,
            "data.streaming=true streams a Hugging Face dataset: give data.dataset=<hub name or local folder>",
        )
        _check(d.source is None, f"data.source={d.source!r} and data.streaming=true: keep one (data.source=null)")
        _check(
            d.tokenizer != "bpe",
            "data.tokenizer=bpe trains on the whole train split before tokenizing it, which a stream cannot give: "
            "use data.streaming=false (or data.tokenizer=gpt2 to stream)",
        )
        _check(
            d.tokenizer == "gpt2",
            f"data.tokenizer={d.tokenizer} cannot stream: a character vocabulary needs a first pass over all "
            "the text; use data.tokenizer=gpt2 (or data.streaming=false)",
        )
        return "stream"
    if d.dataset is not None:
        _check(
            d.source is None,
            f"data.source={d.source!r} and data.dataset={d.dataset!r} are both set: keep one "
            "(data.source=null to use the dataset)",
        )
        return "hf"
    return "text"


def _chat_kind(d: DataConfig) -> str:
    """Conversations: a format we read, one source, a vocabulary with chat tokens, rows that hold a turn."""
    _check(d.format in ("messages", "alpaca"), f"data.format={d.format!r}: use text, messages or alpaca")
    _check(
        d.tokenizer != "char",
        "data.tokenizer=char has no chat tokens: conversations need a BPE vocabulary (data.tokenizer=gpt2 or bpe)",
    )
    _check(
        (d.source is None) != (d.dataset is None),
        "conversations come from one place: give data.source=<files, folder or synthetic:reverse> or "
        "data.dataset=<hub name or folder>, not both or neither",
    )
    _check(
        not (d.streaming or d.shards is not None or d.shards_dir is not None),
        f"data.format={d.format} is prepared in memory: leave data.streaming, data.shards and data.shards_dir unset",
    )
    _check(d.pack_block_size >= 8, f"data.pack_block_size={d.pack_block_size} must be >= 8 tokens")
    _check(d.synthetic_examples >= 10, f"data.synthetic_examples={d.synthetic_examples} must be >= 10")
    return "chat"
