"""GPU throughput: GPT-2 124M through `run.py` on random tokens, tokens/s and MFU at the largest microbatch that fits.

    python benchmarks/gpu_mfu.py [--microbatches 64 48 32 24 16 12 8] [--iters 50] [--shakespeare CORPUS]

Runs `python run.py experiment=gpt2_owt` (GPT-2 124M, block 1024, bf16 autocast, torch.compile, flash attention
through SDPA, fused AdamW, nanoGPT's ~0.5M-token step) on one GPU for `--iters` steps, on a data set of random
GPT-2 token ids written in the shape `prepare.py data=owt` writes (the arithmetic does not depend on the tokens,
and the machine needs no OpenWebText). Microbatches are tried from the largest down; one that runs out of memory
gives way to the next, with `train.grad_accum` keeping the step at ~0.5M tokens. Tokens/s and MFU are read from the
run's metrics.jsonl, the median over the logged intervals after the first (which holds the compilation); MFU is
against the GPU's dense bf16 peak from `nanogpt/device.py`.

With `--shakespeare <input.txt>` it then prepares that corpus and runs nanoGPT's GPU recipe
(`experiment=shakespeare_char`) and reports its wall time and best val loss (nanoGPT: ~3 min and 1.4697 on an A100).

Prints: `gpu_mfu: <GPU>, GPT-2 124M, block 1024, bf16 + compile: microbatch <B> x <accum>: <tok/s> tokens/s,
MFU <x>% ...`. `--smoke` runs the same machinery with a tiny model on the CPU (to check the script, not a figure).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ENV, REPO, prepare_char, read_metrics  # benchmarks/ is on sys.path when this file runs as a script
from omegaconf import OmegaConf

from nanogpt.data.token_files import finish_dataset

STEP_TOKENS = 12 * 1024 * 40  # nanoGPT's GPT-2 step: 491,520 tokens
# --smoke: the shakespeare_char recipe sets its model and loop in full, so shrink them back for a CPU check.
SMOKE_RECIPE = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "train.batch_size=4",
    "train.max_iters=20",
    "train.eval_interval=10",
    "train.eval_iters=2",
    "optim.warmup_iters=2",
    "optim.lr_decay_iters=20",
]


def write_random_owt(data_dir: Path, train_tokens: int, seed: int = 0) -> None:
    """`<data_dir>/owt` as prepare.py writes it (uint16 token files and meta.json), with random GPT-2 ids."""
    out = data_dir / "owt"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": train_tokens, "val": max(train_tokens // 100, 1 << 16)}
    for split, n in sizes.items():
        rng.integers(0, 50257, size=n, dtype=np.uint16).tofile(out / f"{split}.bin")
    meta = {"vocab_size": 50257, "tokenizer": {"kind": "gpt2"}, "dtype": "uint16", "source": "random ids"}
    finish_dataset(str(out), {**meta, **{f"{split}_tokens": n for split, n in sizes.items()}})


def run_gpt2(tmp: Path, microbatch: int, iters: int, extra: list[str]) -> tuple[str, dict | None]:
    """One run at `microbatch`; ("ok", figures), ("oom", None), or exits on any other failure."""
    accum = max(1, round(STEP_TOKENS / (microbatch * 1024)))
    name = f"mfu-b{microbatch}"
    args = [
        "experiment=gpt2_owt",
        f"paths.data_dir={tmp / 'data'}",
        f"name={name}",
        f"train.batch_size={microbatch}",
        f"train.grad_accum={accum}",
        f"train.max_iters={iters}",
        f"train.eval_interval={iters}",
        "train.eval_iters=1",
        "train.log_interval=5",
        "train.always_save_checkpoint=false",
        "train.eval_tasks=[]",  # training throughput only: no HellaSwag (and no download on an offline GPU)
        f"optim.warmup_iters={min(5, iters - 1)}",
        f"optim.lr_decay_iters={iters}",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args], cwd=tmp, env=ENV, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        if "out of memory" in proc.stderr.lower():
            return "oom", None
        sys.exit(f"run.py failed at microbatch {microbatch}:\n{proc.stderr[-3000:]}")
    run = tmp / "outputs" / name / "latest"
    records = read_metrics(run)
    steps = [r for r in records if "tokens_per_s" in r][1:]  # the first interval holds the compilation
    if not steps:
        sys.exit(f"gpu_mfu: {iters} steps make one logged interval only: give more --iters")
    train_cfg = OmegaConf.load(run / ".hydra" / "config.yaml").train  # as run, overrides included
    figures = {
        "microbatch": train_cfg.batch_size,
        "accum": train_cfg.grad_accum,
        "wall_s": wall,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps),
        "mfu": statistics.median(r["mfu"] for r in steps) if all("mfu" in r for r in steps) else None,
    }
    return "ok", figures


def run_shakespeare(tmp: Path, corpus: str, extra: list[str]) -> dict:
    data = [f"paths.data_dir={tmp / 'data'}", f"data.source={corpus}"]
    prepare_char(str(tmp / "data"), corpus, str(tmp))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "run.py"), "experiment=shakespeare_char", *data, *extra],
        cwd=tmp,
        env=ENV,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - t0
    run = tmp / "outputs" / "shakespeare_char" / "latest"
    records = read_metrics(run)
    return {"wall_s": wall, "best_val": min(r["val_loss"] for r in records if "val_loss" in r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--microbatches", type=int, nargs="+", default=[64, 48, 32, 24, 16, 12, 8])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--shakespeare", metavar="CORPUS", help="also time experiment=shakespeare_char on this text")
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks the script, not a figure")
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides for every run")
    args = ap.parse_args()

    extra = list(args.overrides)
    if args.smoke:
        extra = [
            "model=tiny",
            "model.block_size=64",
            "device=cpu",
            "train.grad_accum=2",
            "train.log_interval=1",
            *extra,
        ]
        gpu, what = "CPU (smoke run, not a figure)", "tiny model, block 64, fp32"
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_mfu: needs a CUDA GPU (use --smoke to check the script on a CPU)")
        gpu, what = torch.cuda.get_device_name(), "GPT-2 124M, block 1024, bf16 + compile"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_random_owt(tmp / "data", 20_000_000 if not args.smoke else 200_000)
        for microbatch in sorted(args.microbatches, reverse=True):
            status, fig = run_gpt2(tmp, microbatch, args.iters, extra)
            if status == "ok":
                break
            print(f"  microbatch {microbatch}: out of memory", flush=True)
        else:
            sys.exit("gpu_mfu: every microbatch ran out of memory")
        mfu = f"MFU {100 * fig['mfu']:.1f}%" if fig["mfu"] is not None else "MFU unknown (GPU not in the peak table)"
        line = (
            f"gpu_mfu: {gpu}, {what}: microbatch {fig['microbatch']} x "
            f"{fig['accum']}: {fig['tokens_per_s']:,.0f} tokens/s, {mfu} (median over steps after the first "
            f"interval; run {fig['wall_s']:.0f} s for {args.iters} steps)"
        )
        if args.shakespeare:
            sh = run_shakespeare(tmp, args.shakespeare, [*extra, *SMOKE_RECIPE] if args.smoke else args.overrides)
            line += f"; shakespeare_char: {sh['wall_s']:.0f} s, best val {sh['best_val']:.4f}"
    print(line)


if __name__ == "__main__":
    main()
