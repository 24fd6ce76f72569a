"""Generation with bf16 against fp32 weights on the CPU, for three model sizes: what `sample.py` should default to.

    python benchmarks/sampling_dtype.py [--rounds 2]

Random weights, batch 1, a 32-token prompt, `GPT.generate` with its KV cache, temperature 1: GPT-2 124M (40 new
tokens), the `baby` model (6x384, block 256) and the CPU recipe's character model (4x128, block 64), 300 new tokens
each. The same model is cast back and forth between fp32 and bf16 and the two alternate within each round.

Prints one line: `sampling_dtype: bf16/fp32 tokens/s: 124M <x>x, baby <y>x, char <z>x (...)`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run as benchmarks/sampling_dtype.py

import torch

from nanogpt.config import ModelConfig
from nanogpt.kernels import decode_layout
from nanogpt.model import GPT

MODELS = {  # name: (shape, new tokens)
    "124M": (dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304), 40),
    "baby": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65), 300),
    "char": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65), 300),
}


@torch.no_grad()
def tokens_per_s(model: GPT, prompt: torch.Tensor, new: int) -> float:
    t0 = time.perf_counter()
    with decode_layout(model):  # as sample.py decodes
        model.generate(prompt, new, temperature=1.0, generator=torch.Generator().manual_seed(0))
    return new / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    parts = []
    for name, (shape, new) in MODELS.items():
        torch.manual_seed(0)
        model = GPT(ModelConfig(**shape, bias=False, pad_vocab_multiple=1)).eval()
        prompt = torch.randint(0, shape["vocab_size"], (1, 32))
        speed: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}
        for _ in range(args.rounds):
            for dtype in speed:
                speed[dtype].append(tokens_per_s(model.to(dtype=dtype), prompt, new))
        fp32, bf16 = (statistics.median(speed[d]) for d in (torch.float32, torch.bfloat16))
        parts.append((name, fp32, bf16))
    ratios = ", ".join(f"{name} {bf16 / fp32:.2f}x" for name, fp32, bf16 in parts)
    detail = "; ".join(f"{name} {fp32:,.1f} vs {bf16:,.1f}" for name, fp32, bf16 in parts)
    print(
        f"sampling_dtype: bf16/fp32 tokens/s: {ratios} (fp32 vs bf16 tokens/s: {detail}; "
        f"{torch.get_num_threads()} threads, median of {args.rounds} rounds)"
    )


if __name__ == "__main__":
    main()
