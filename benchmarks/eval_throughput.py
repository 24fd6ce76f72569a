"""HellaSwag scoring against the model's plain forward, in tokens/s, on the same device: what evaluation costs.

    python benchmarks/eval_throughput.py [--rounds 3] [--examples 64] [--model baby|gpt2|char] [--file <jsonl>]

Random weights, fp32, eval mode: `baby` (6x384) and `gpt2` (12x768) with GPT-2's vocabulary and a 1024 block;
`char`, the CPU recipe's character model (4x128, block 64, tiny Shakespeare's 65 characters).
The examples are HellaSwag's (`--file`) or, offline, made in its shape from the real tiny Shakespeare: a context of
20-60 words and four endings of 8-25 words each (HellaSwag's rows run ~50-120 GPT-2 tokens).

- eval: `nanogpt.eval.hellaswag.score` on the examples, everything included (tokenizing, batching an example's
  4 endings together, padding, the forward, the log-softmax over the endings' positions); counted in real tokens,
  the rows' lengths without padding.
- forward: `model(x)` on random token batches of the same rows per forward, each as long as the eval's mean row,
  as many tokens in all: the same work with no padding and nothing around it.

The two alternate within each round; medians. Prints one line: `eval_throughput: hellaswag <r>x the plain forward's
tokens/s (...)`.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run as benchmarks/eval_throughput.py

import torch

from benchmarks.common import CORPUS
from nanogpt.config import ModelConfig
from nanogpt.eval import hellaswag
from nanogpt.eval.scoring import Scorer
from nanogpt.model import GPT
from nanogpt.tokenizer import CharTokenizer, GPT2Tokenizer

SHAPES = {
    "baby": dict(n_layer=6, n_head=6, n_embd=384, block_size=1024),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "char": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
}


def shakespeare_examples(n: int, seed: int = 0) -> bytes:
    """`n` examples in hellaswag_val.jsonl's format, cut from the corpus at random places."""
    words = Path(CORPUS).read_text().split()
    rng = random.Random(seed)

    def span(lo: int, hi: int) -> str:
        k = rng.randint(lo, hi)
        start = rng.randrange(len(words) - k)
        return " ".join(words[start : start + k])

    lines = [
        {"ctx": span(20, 60), "endings": [span(8, 25) for _ in range(4)], "label": rng.randrange(4)} for _ in range(n)
    ]
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def time_eval(scorer: Scorer, examples: list) -> tuple[float, int]:
    """Seconds for one scoring of every example, and the real tokens it fed the model."""
    tokens = sum(len(r.tokens) - 1 for ex in examples for r in hellaswag.rows(scorer, ex)[0])
    t0 = time.perf_counter()
    hellaswag.score(scorer, examples)
    return time.perf_counter() - t0, tokens


@torch.no_grad()
def time_forward(model: GPT, rows_per_forward: int, length: int, forwards: int) -> float:
    x = torch.randint(0, model.config.vocab_size, (rows_per_forward, length))
    t0 = time.perf_counter()
    for _ in range(forwards):
        model(x)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="rows per forward (eval.batch_size)")
    ap.add_argument("--model", choices=sorted(SHAPES), default="baby")
    ap.add_argument("--file", help="a hellaswag_val.jsonl to take the examples from")
    args = ap.parse_args()

    payload = Path(args.file).read_bytes() if args.file else shakespeare_examples(args.examples)
    examples = hellaswag.parse(payload, args.file or "the Shakespeare examples")[: args.examples]
    torch.manual_seed(0)
    if args.model == "char":
        tokenizer = CharTokenizer.from_text(Path(CORPUS).read_text())
        vocab, padded = tokenizer.vocab_size, tokenizer.vocab_size
    else:
        tokenizer, vocab, padded = GPT2Tokenizer(), 50257, 50304
    cfg = ModelConfig(**SHAPES[args.model], vocab_size=padded)
    model = GPT(cfg).eval()
    scorer = Scorer(model, tokenizer, cfg.block_size, vocab, torch.device("cpu"), batch_size=args.batch_size)
    hellaswag.score(scorer, examples[:8])  # warm-up: kernels, allocator, the tokenizer's cache
    _, tokens = time_eval(scorer, examples)
    rows = 4 * max(1, args.batch_size // 4)
    forwards = -(-len(examples) * 4 // rows)
    mean_length = round(tokens / (4 * len(examples)))
    evals, plains = [], []
    for _ in range(args.rounds):
        seconds, _ = time_eval(scorer, examples)
        evals.append(tokens / seconds)
        plains.append(rows * mean_length * forwards / time_forward(model, rows, mean_length, forwards))
    ev, fw = statistics.median(evals), statistics.median(plains)
    print(
        f"eval_throughput: hellaswag {ev / fw:.2f}x the plain forward's tokens/s (eval {ev:,.0f} vs forward "
        f"{fw:,.0f} tokens/s; {args.model} model, vocabulary {vocab}, fp32, {len(examples)} examples, mean row "
        f"{mean_length} tokens, {rows} rows per forward, {torch.get_num_threads()} threads, median of {args.rounds} "
        f"alternating rounds; {1000 * tokens / len(examples) / ev:.1f} s per 1000 examples)"
    )


if __name__ == "__main__":
    main()
