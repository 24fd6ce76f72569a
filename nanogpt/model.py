"""The GPT: GPT-2's architecture in plain PyTorch, plus a KV cache for fast generation.

Off by default, a few changes from the 2024-25 GPT speedruns (ModelConfig documents each): rotary position
embeddings, RMS-normed queries and keys, ReLU² MLPs, untied embeddings, zero-initialised output projections.
With none of them set this is exactly GPT-2, and loads OpenAI's weights.

Knows nothing of data, devices, distributed training, checkpoints or logging: attention and ReLU² go through
nanogpt.kernels, which picks the kernel for where they run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt.config import ModelConfig
from nanogpt.kernels import attend, compute_dtype, relu_squared

Rope = tuple[torch.Tensor, torch.Tensor]  # cos and sin of the rotary angles of the positions in hand
# GPT.forward's logits_at for the last position of each row, (B, 1, vocab): all that generation needs.
LAST_POSITION = (slice(None), [-1])


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for a whole block."""

    def __init__(self, cfg: ModelConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0  # tokens held; advanced by the model after the last layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al. 2021, RoFormer): instead of adding a learned position vector to
    the input, each query and key is rotated by an angle proportional to its position, pair of channels by
    pair of channels, at frequencies from 1 down to 1/base. The dot product of a query at position m and a
    key at n then depends only on m - n: attention sees relative positions, and there is no table to learn."""

    def __init__(self, head_dim: int, block_size: int, base: float):
        super().__init__()
        inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (block_size, head_dim/2)
        # Not persistent: derived from the config, so checkpoints and GPT-2 state dicts never hold them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, start: int, length: int) -> Rope:
        """cos and sin of absolute positions start .. start + length - 1: with a KV cache the new tokens
        come after the `start` cached ones, and each key is rotated once, when it enters the cache."""
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rotary(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotate (B, n_head, T, head_dim) by the angles of its T positions; channel i pairs with i + head_dim/2."""
    cos, sin = rope
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # QK-norm (Dehghani et al. 2023; OLMo 2): RMS-normalise each head's queries and keys, with a learned
        # gain, so attention logits cannot grow without bound; this lets the lr go higher without spikes.
        head_dim = cfg.n_embd // cfg.n_head
        self.q_norm = nn.RMSNorm(head_dim) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim) if cfg.qk_norm else None

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope: Rope | None = None
    ) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            # In the gains' dtype: RMSNorm's fused kernel needs input and gain alike (else a warning and a slower
            # fallback), and under bf16 autocast q and k arrive in bf16 at fp32 gains.
            dtype = self.q_norm.weight.dtype
            q, k = self.q_norm(q.to(dtype)).type_as(q), self.k_norm(k.to(dtype)).type_as(k)
        if rope is not None:  # before caching: a cached key keeps the rotation of its own position
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        mask, is_causal = None, True
        if cache is not None:
            start = cache.pos
            k, v = cache.update(layer, k, v)
            if start > 0:
                # New queries see every cached key and the new keys up to their own position.
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = attend(q, k, v, mask=mask, is_causal=is_causal, dropout=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class ReLUSquared(nn.Module):
    """relu(x)²: as cheap as ReLU, smooth at 0 like GELU, and sparse; it trains a little faster than GELU
    (So et al. 2021, Primer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_squared(x)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        # GPT-2 was trained with the tanh approximation of GELU: the exact form shifts its logits.
        acts = {"gelu": lambda: nn.GELU(approximate="tanh"), "gelu_exact": nn.GELU, "relu2": ReLUSquared}
        self.act = acts[cfg.activation]()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rope: Rope | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.vocab_size is not None, "resolve the vocabulary size before building the model"
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                # Learned absolute positions, unless rotary embeddings put positions into attention instead.
                **({} if cfg.rotary else dict(wpe=nn.Embedding(cfg.block_size, cfg.n_embd))),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.rotary = Rotary(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base) if cfg.rotary else None
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # Weight tying (Press & Wolf 2017): the output projection is the token embedding, as in GPT-2.
            # Untied, the two can learn different things (what a token means vs what predicts it) for
            # vocabulary-size more parameters, which costs nothing in matmul FLOPs at the input.
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # Each block adds two projections to the residual stream; scaling their init by 1/sqrt(2 * n_layer)
        # keeps the stream's variance from growing with depth (GPT-2 paper, section 2.3).
        # Zero-initialised output projections (options): every block starts as the identity and the first logits
        # are uniform (loss = ln vocab), so early steps spend nothing undoing random initial outputs. Gradients
        # still flow: a zero matrix gets the gradient of its input's activations.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
            if (cfg.zero_init_proj and name.endswith("c_proj.weight")) or (
                cfg.zero_init_head and name == "lm_head.weight"
            ):
                nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters, counting the tied embedding once; by default without the lookup tables that take no
        part in the matmul FLOPs: position embeddings, and the token embedding when it is not the head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        logits_at: tuple | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for each position of `idx` (B, T), and the mean cross-entropy when `targets` are given.

        With a cache, `idx` holds only the tokens after those already cached. `logits_at`, an index into the
        (B, T) positions, computes the logits there alone: (rows, positions) tensors give (N, vocab), what scoring
        a continuation needs; `LAST_POSITION` gives (B, 1, vocab), what generation needs. The output layer is most
        of a small model's forward.
        """
        B, T = idx.size()
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens, longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.rotary is not None:
            rope = self.rotary(start, T)
        else:
            x = x + self.transformer.wpe(torch.arange(start, start + T, dtype=torch.long, device=idx.device))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, rope)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x if logits_at is None else x[logits_at]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size: int) -> None:
        """Shorten the context, e.g. to finetune GPT-2 (1024) on shorter blocks."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if self.rotary is not None:
            return  # rotary angles are computed, not learned: the longer table does no harm
        # A copy, not a view: a view would keep the whole table alive, and safetensors refuses to save it.
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight.detach()[:block_size].clone())

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices (matmul weights, embeddings) only; never on biases and norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's
        12 * n_layer * n_embd * block_size (PaLM paper, appendix B)."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.block_size

    @torch.no_grad()
    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        vocab_limit: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield the next token (B, 1) for `max_new_tokens` steps after the prompt `idx` (B, T).

        Keys and values are cached, so each step runs the model on one token. Beyond block_size the
        context is cropped to its last half-block and the cache rebuilt, once per half-block of tokens.
        temperature 0 is greedy; ids at or above `vocab_limit` (vocabulary padding) are never drawn.
        Callers decode quicker inside `kernels.decode_layout(model)`, as sample.py does.
        """
        block = self.config.block_size
        # Keys and values are cached in the dtype they are computed in, so that attention does not recast the whole
        # cache at every token.
        cache = KVCache(self.config, idx.size(0), idx.device, compute_dtype(self))
        logits, _ = self(idx[:, -block:], cache=cache, logits_at=LAST_POSITION)
        for i in range(max_new_tokens):
            next_id = sample_next(logits[:, -1, :].float(), temperature, top_k, top_p, vocab_limit, generator)
            yield next_id
            if i == max_new_tokens - 1:
                break
            idx = torch.cat((idx, next_id), dim=1)
            if cache.pos == block:
                cache.pos = 0
                logits, _ = self(idx[:, -(block // 2 + 1) :], cache=cache, logits_at=LAST_POSITION)
            else:
                logits, _ = self(next_id, cache=cache, logits_at=LAST_POSITION)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """The prompt followed by `max_new_tokens` generated tokens (B, T + max_new_tokens)."""
        new = list(self.generate_stream(idx, max_new_tokens, **kwargs))
        return torch.cat([idx, *new], dim=1)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    vocab_limit: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one token per row from (B, V) logits."""
    if vocab_limit is not None and vocab_limit < logits.size(-1):
        logits = logits[:, :vocab_limit]
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the ones before it already hold top_p; the likeliest always stays.
        drop = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
