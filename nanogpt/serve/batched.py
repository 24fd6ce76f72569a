"""One decoding step over many sequences at once: a KV cache with a row per sequence, each at its own position.

The model's own forward keeps one position for the whole batch (`KVCache.pos`); sequences that joined at different
times are at different lengths, so this step writes each new key and value at its row's position and masks each
row's attention to its own keys. It calls the model's modules (embeddings, norms, projections, MLPs, rotary
tables) and repeats only the attention's bookkeeping, so every option the model has (rotary, QK-norm, ReLU²,
untied embeddings, LoRA layers over the projections) decodes here as it does in `GPT.generate_stream`.
"""

from __future__ import annotations

import torch

from nanogpt.config import ModelConfig
from nanogpt.kernels import attend
from nanogpt.model import GPT, LAST_POSITION, CausalSelfAttention, KVCache, Rope, apply_rotary


class BatchedCache:
    """Keys and values for `rows` sequences, each up to a block long; the active sequences use rows 0..B-1."""

    def __init__(self, cfg: ModelConfig, rows: int, device: torch.device, dtype: torch.dtype):
        shape = (rows, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]

    def put(self, row: int, prefilled: KVCache) -> None:
        """Copy a one-sequence cache (a prompt's prefill) into `row`."""
        end = prefilled.pos
        for k, v, pk, pv in zip(self.k, self.v, prefilled.k, prefilled.v, strict=True):
            k[row, :, :end] = pk[0, :, :end]
            v[row, :, :end] = pv[0, :, :end]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row `src` into row `dst` (keeping the active rows together)."""
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


def prefill(model: GPT, ids: list[int], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, KVCache]:
    """The logits after a prompt (1, vocab) and its cache, through the model's own forward: the same first step
    as `GPT.generate_stream`."""
    cache = KVCache(model.config, 1, device, dtype)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    logits, _ = model(x, cache=cache, logits_at=LAST_POSITION)
    return logits[:, -1, :], cache


def decode_step(model: GPT, cache: BatchedCache, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The next-token logits (B, vocab) of B sequences whose last tokens `idx` (B,) sit at positions `pos` (B,):
    row b of the cache holds sequence b's first pos[b] keys and values, and gains one more."""
    B = idx.size(0)
    x = model.transformer.wte(idx).unsqueeze(1)  # (B, 1, C)
    rope: Rope | None = None
    if model.rotary is not None:
        rope = (model.rotary.cos[pos].view(B, 1, 1, -1), model.rotary.sin[pos].view(B, 1, 1, -1))
    else:
        x = x + model.transformer.wpe(pos).unsqueeze(1)
    length = int(pos.max()) + 1
    # Row b sees its own keys 0..pos[b]; the rest of the window is other sequences' length, not its past.
    mask = (torch.arange(length, device=idx.device) <= pos[:, None]).view(B, 1, 1, length)
    rows = torch.arange(B, device=idx.device)
    for layer, block in enumerate(model.transformer.h):
        x = x + _attend(block.attn, block.ln_1(x), cache, layer, rows, pos, mask, rope)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.transformer.ln_f(x)[:, 0, :])


def _attend(
    attn: CausalSelfAttention,
    x: torch.Tensor,
    cache: BatchedCache,
    layer: int,
    rows: torch.Tensor,
    pos: torch.Tensor,
    mask: torch.Tensor,
    rope: Rope | None,
) -> torch.Tensor:
    """`CausalSelfAttention.forward` for one new token per row, its key and value cached at the row's position."""
    B, _, C = x.shape
    H = attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, 1, H, C // H).transpose(1, 2) for t in (q, k, v))  # (B, H, 1, D)
    if attn.q_norm is not None:
        dtype = attn.q_norm.weight.dtype
        q, k = attn.q_norm(q.to(dtype)).type_as(q), attn.k_norm(k.to(dtype)).type_as(k)
    if rope is not None:
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
    keys, values = cache.k[layer], cache.v[layer]
    keys[rows, :, pos] = k[:, :, 0].to(keys.dtype)
    values[rows, :, pos] = v[:, :, 0].to(values.dtype)
    length = mask.size(-1)
    y = attend(q, keys[:B, :, :length], values[:B, :, :length], mask=mask, is_causal=False)
    return attn.c_proj(y.transpose(1, 2).reshape(B, 1, C))
