"""Sampling speed: our KV-cache generation against full recompute per token (nanoGPT's way) and Hugging Face.

    python benchmarks/sampling.py [--rounds 3] [--prompt 512] [--new 200] [--recompute-rounds 1] [--process-rounds 3]

GPT-2 124M shapes with random weights, fp32 on the CPU, batch 1, a `--prompt`-token prompt and `--new` new tokens,
greedy. The same weights serve three generators, timed in alternation, in one process:
  ours       GPT.generate: one prefill of the prompt, then one token per step against the KV cache
  recompute  nanoGPT's generate: the whole (growing) sequence through the model for every new token
  hf         transformers' GPT2LMHeadModel.generate(use_cache=True) on a copy made by nanogpt.pretrained
Then the character model of the CPU recipe (4 layers, 128 wide, block 64): ours against recompute, 500 tokens; and
`python sample.py run=<a run of the CPU recipe> num_samples=1 max_new_tokens=500` timed as a whole process, launch
to exit, against `python -c "import torch"` alternately (`--process-rounds`; 0 skips it). `--recompute-rounds 0`
skips full recompute (minutes at 124M); `--process-only` times only the sample.py process.

Prints one line: `sampling: 124M ours <tok/s>, <x> recompute, <y> Hugging Face; char model ...`. Time is from the
prompt to the last new token (prefill included); tokens/s counts new tokens. Then a `floor:` line: each generator's
decode time per token ((time for `--new` tokens - time for 1) / (`--new` - 1), from extra alternated runs of 1 token)
against the memory-bandwidth floor of batch-1 decoding, the bytes a step must read (every weight once, the KV cache
at the mean context; Hugging Face's cache concatenation also copies its cache) over the read bandwidth measured here
(`sum()` of a weights-sized tensor, alternated with the runs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, when run as benchmarks/sampling.py
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/common.py

import torch

from nanogpt.config import ModelConfig
from nanogpt.kernels import decode_layout
from nanogpt.model import GPT, LAST_POSITION


@torch.no_grad()
def recompute(model: GPT, idx: torch.Tensor, new: int) -> torch.Tensor:
    """nanoGPT's generate, greedy: every step runs the whole context (cropped to block_size) through the model."""
    block = model.config.block_size
    for _ in range(new):
        logits, _ = model(idx[:, -block:], logits_at=LAST_POSITION)
        idx = torch.cat((idx, logits[:, -1, :].argmax(dim=-1, keepdim=True)), dim=1)
    return idx


def timed(fn) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def sample_process(args: argparse.Namespace) -> str:
    """The whole `python sample.py` process on a run of the CPU recipe (2 steps of it: the weights do not change
    the speed), `--char-new` tokens, one sample, against `python -c "import torch"`, alternately."""
    if not args.process_rounds:
        return ""
    from common import CORPUS, ENV, REPO, prepare_char

    with tempfile.TemporaryDirectory() as tmp:
        prepare_char(f"{tmp}/data", CORPUS, tmp)
        train = [sys.executable, str(REPO / "run.py"), "experiment=shakespeare_char_cpu", f"paths.data_dir={tmp}/data"]
        train += ["train.max_iters=2", "train.eval_iters=1", "optim.warmup_iters=1", "optim.lr_decay_iters=2"]
        subprocess.run(train, cwd=tmp, env=ENV, check=True, capture_output=True)
        sample = [sys.executable, str(REPO / "sample.py"), f"run={tmp}/outputs/shakespeare_char_cpu/latest"]
        sample += ["num_samples=1", f"max_new_tokens={args.char_new}"]
        times: dict[str, list[float]] = {"sample": [], "torch": []}
        for _ in range(args.process_rounds):
            for name, cmd in (("sample", sample), ("torch", [sys.executable, "-c", "import torch"])):
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=tmp, env=ENV, check=True, capture_output=True)
                times[name].append(time.perf_counter() - t0)
    s, t = statistics.median(times["sample"]), statistics.median(times["torch"])
    return f"sample.py process ({args.char_new} tokens) {s:.2f} s (import torch {t:.2f} s); "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of ours and Hugging Face")
    ap.add_argument("--recompute-rounds", type=int, default=1, help="rounds of full recompute (slow)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--char-new", type=int, default=500)
    ap.add_argument("--process-rounds", type=int, default=3, help="rounds of the whole sample.py process")
    ap.add_argument("--process-only", action="store_true", help="only the sample.py process (no 124M, no char model)")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    if args.process_only:
        print(f"sampling: {sample_process(args)}load {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
        return
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt.pretrained import from_hf_model

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(attn_implementation="sdpa")).eval()  # 124M, block 1024, vocab 50257
    ours = from_hf_model(hf).eval()
    idx = torch.randint(0, 50257, (1, args.prompt))
    mask = torch.ones_like(idx)

    def run_ours() -> torch.Tensor:
        with decode_layout(ours):  # as sample.py decodes
            return ours.generate(idx, args.new, temperature=0.0)

    def run_hf() -> torch.Tensor:
        return hf.generate(
            idx,
            attention_mask=mask,
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            eos_token_id=None,
        )

    def run_recompute() -> torch.Tensor:
        return recompute(ours, idx, args.new)

    def run_ours_1() -> torch.Tensor:
        with decode_layout(ours):
            return ours.generate(idx, 1, temperature=0.0)

    def run_hf_1() -> torch.Tensor:
        return hf.generate(
            idx, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0, eos_token_id=None
        )

    # What a decode step must read: every weight once (the tied embedding as the output layer; the position table
    # only a row), and the keys and values of the context.
    weight_bytes = 4 * (sum(p.numel() for p in ours.parameters()) - ours.transformer.wpe.weight.numel())
    c = ours.config
    cache_bytes = 4 * 2 * c.n_layer * c.n_embd * (args.prompt + args.new / 2)
    block = torch.ones(weight_bytes // 4)

    def read() -> torch.Tensor:
        return block.sum()

    run_ours(), run_hf()  # warm-up: first-call allocations and lazy initialisation
    times: dict[str, list[float]] = {"ours": [], "hf": [], "recompute": [], "ours_1": [], "hf_1": [], "read": []}
    outs: dict[str, torch.Tensor] = {}
    for r in range(args.rounds):
        order = [("ours", run_ours), ("hf", run_hf), ("ours_1", run_ours_1), ("hf_1", run_hf_1), ("read", read)]
        if r < args.recompute_rounds:
            order.insert(1, ("recompute", run_recompute))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            s, outs[name] = timed(fn)
            times[name].append(s)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    tps = {k: args.new / med[k] for k in ("ours", "hf", "recompute") if k in med}
    bandwidth = weight_bytes / med["read"]
    step = {k: (med[k] - med[f"{k}_1"]) / (args.new - 1) for k in ("ours", "hf")}
    floor = {"ours": (weight_bytes + cache_bytes) / bandwidth, "hf": (weight_bytes + 3 * cache_bytes) / bandwidth}
    vs_hf = statistics.median(h / o for o, h in zip(times["ours"], times["hf"], strict=True))
    same = {k: int((v[0, args.prompt :] == outs["ours"][0, args.prompt :]).sum()) for k, v in outs.items() if k in tps}
    recomputed = (
        f"{med['recompute'] / med['ours']:.1f}x full recompute ({tps['recompute']:.2f} tokens/s, same greedy tokens "
        f"{same['recompute']}/{args.new}) and "
        if "recompute" in med
        else ""
    )

    # The character model of the CPU recipe: the cache is rebuilt every half block past block_size.
    torch.manual_seed(0)
    char = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65, bias=False)).eval()
    start = torch.zeros((1, 1), dtype=torch.long)

    def run_char() -> torch.Tensor:
        with decode_layout(char):
            return char.generate(start, args.char_new, temperature=0.0)

    run_char()
    char_times: dict[str, list[float]] = {"ours": [], "recompute": []}
    for _ in range(args.rounds):
        char_times["ours"].append(timed(run_char)[0])
        char_times["recompute"].append(timed(lambda: recompute(char, start, args.char_new))[0])
    char_tps = {k: args.char_new / statistics.median(v) for k, v in char_times.items()}

    print(
        f"sampling: GPT-2 124M fp32 batch 1, {args.prompt}-token prompt, {args.new} new: ours {tps['ours']:.1f} "
        f"tokens/s = {recomputed}{vs_hf:.2f}x Hugging Face generate ({tps['hf']:.1f} tokens/s; same greedy tokens "
        f"{same['hf']}/{args.new}); char model (4x128, block 64): ours {char_tps['ours']:,.0f} tokens/s = "
        f"{char_tps['ours'] / char_tps['recompute']:.1f}x recompute; {sample_process(args)}threads "
        f"{torch.get_num_threads()}, median of {args.rounds} rounds, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(
        f"floor: a decode step reads {weight_bytes / 1e6:.0f} MB of weights and {cache_bytes / 1e6:.0f} MB of KV cache "
        f"(mean context; Hugging Face's concatenation reads and writes its cache again: "
        f"+{2 * cache_bytes / 1e6:.0f} MB) at a read bandwidth of {bandwidth / 1e9:.1f} GB/s: floor ours "
        f"{floor['ours'] * 1e3:.1f} ms/token, decode {step['ours'] * 1e3:.1f} ms/token "
        f"({floor['ours'] / step['ours']:.0%} of the floor's speed); Hugging Face floor "
        f"{floor['hf'] * 1e3:.1f}, decode {step['hf'] * 1e3:.1f} ms/token ({floor['hf'] / step['hf']:.0%}); prefill "
        f"ours {med['ours_1']:.2f} s, Hugging Face {med['hf_1']:.2f} s"
    )


if __name__ == "__main__":
    main()
