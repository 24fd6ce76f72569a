"""Training step on the CPU: the `shakespeare_char_cpu` recipe against a plain eager fp32 loop, nanoGPT's way.

    python benchmarks/train_step.py [--rounds 3] [--iters 2000] [--corpus ../shared/data/tinyshakespeare.txt]
                                    [run.py overrides for ours, e.g. device.compile=true]

Alternates, in fresh processes, `python run.py experiment=shakespeare_char_cpu` (ours) and the baseline below,
ABAB... for `--rounds` rounds, on the same prepared tokens. The baseline trains the same model (nanogpt.model.GPT,
same shape, seed and init) with the same schedule the way nanoGPT's train.py does on a CPU: a fresh np.memmap of
the token file for every batch, torch.randint offsets, `loss.item()` every iteration, the for-loop AdamW (no
`fused`), fp32, no compile, torch's default threads. Both end by evaluating the final weights on the same batches
(our deterministic eval batches), so the val losses compare.

Prints one line: `train_step: ours <tok/s> vs nanoGPT-way <tok/s> = <ratio>x tokens/s (median of N rounds), ...`.
Tokens/s are the median over the steps of a run (past 10 warm-up steps, evaluations excluded); wall is the whole
process, start-up, compile and evaluations included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, ENV, REPO, prepare_char, read_metrics  # benchmarks/ is on sys.path as a script

WARMUP = 10  # steps left out of the tokens/s median


def baseline(data_dir: str, iters: int, eval_iters: int = 20) -> dict:
    """nanoGPT's CPU loop over our model and recipe; returns its per-step tokens/s, final val loss, and the
    seconds from its launch (BENCH_LAUNCHED_AT in the environment, else its first line) to its first step."""
    launched = float(os.environ.get("BENCH_LAUNCHED_AT", time.time()))
    import numpy as np
    import torch

    from nanogpt.config import ModelConfig
    from nanogpt.data.batches import Batches
    from nanogpt.model import GPT

    path = os.path.join(data_dir, "shakespeare_char")
    batch_size, block_size = 12, 64
    lr, min_lr, warmup, decay_iters = 1e-3, 1e-4, 100, 2000
    torch.manual_seed(1337)
    model = GPT(
        ModelConfig(
            n_layer=4,
            n_head=4,
            n_embd=128,
            block_size=block_size,
            vocab_size=65,
            dropout=0.0,
            bias=False,
            pad_vocab_multiple=1,
        )
    )
    optimizer = torch.optim.AdamW(model.optimizer_groups(0.1), lr=lr, betas=(0.9, 0.99))

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        # nanoGPT re-creates the memmap on every batch to avoid a memory leak it saw.
        data = np.memmap(os.path.join(path, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    def get_lr(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay_iters:
            return min_lr
        ratio = (it - warmup) / (decay_iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    @torch.no_grad()
    def estimate_loss() -> None:
        model.eval()
        for split in ("train", "val"):
            for _ in range(eval_iters):
                model(*get_batch(split))
        model.train()

    step_s, first_step_s = [], None
    for it in range(iters):
        if it % 250 == 0:
            estimate_loss()  # nanoGPT's periodic evaluation (random batches): part of its wall time
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        x, y = get_batch("train")
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        step_s.append(time.perf_counter() - t0)
        if first_step_s is None:
            first_step_s = time.time() - launched
    batches = Batches(path, block_size, batch_size, 1, 1337, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        val = sum(model(*batches.eval("val", k))[1].item() for k in range(eval_iters)) / eval_iters
    tps = [batch_size * block_size / s for s in step_s[WARMUP:]]
    return {"tokens_per_s": tps, "val_loss": val, "first_step_s": first_step_s, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: per address space, so exact after fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def ours(data_dir: str, corpus: str, iters: int, overrides: list[str], cwd: str) -> dict:
    args = [
        "experiment=shakespeare_char_cpu",
        f"paths.data_dir={data_dir}",
        f"data.source={corpus}",
        f"train.max_iters={iters}",
        *overrides,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=ENV, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run.py failed:\n{proc.stderr[-3000:]}")
    run = Path(cwd) / "outputs" / "shakespeare_char_cpu" / "latest"
    records = read_metrics(run)
    tps = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][WARMUP:]
    return {"tokens_per_s": tps, "val_loss": [r for r in records if "val_loss" in r][-1]["val_loss"], "wall_s": wall}


def run_baseline(data_dir: str, iters: int, cwd: str, eval_iters: int = 20) -> dict:
    """The baseline in a fresh process; its figures, with `wall_s` measured from here."""
    t0 = time.perf_counter()
    env = {**ENV, "BENCH_LAUNCHED_AT": repr(time.time())}
    cmd = [sys.executable, __file__, "--baseline-worker", data_dir, "--iters", str(iters)]
    cmd += ["--eval-iters", str(eval_iters)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"baseline failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--baseline-worker", metavar="DATA_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--eval-iters", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both (default: torch's, one per core)")
    ap.add_argument("--verbose", action="store_true", help="print each run's figures")
    ap.add_argument("overrides", nargs="*", help="run.py overrides for ours, e.g. device.dtype=float32")
    args = ap.parse_args()
    if args.baseline_worker:
        print(json.dumps(baseline(args.baseline_worker, args.iters, args.eval_iters)))
        return
    if args.threads:
        ENV["OMP_NUM_THREADS"] = str(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = f"{tmp}/data"
        prepare_char(data_dir, args.corpus, tmp)
        results: dict[str, list[dict]] = {"ours": [], "base": []}
        for r in range(args.rounds):
            # Alternate which goes first, so a slow spell of the machine's other jobs hits both.
            for who in ("ours", "base") if r % 2 == 0 else ("base", "ours"):
                if who == "ours":
                    res = ours(data_dir, args.corpus, args.iters, args.overrides, tmp)
                else:
                    res = run_baseline(data_dir, args.iters, tmp)
                res["median_tps"] = statistics.median(res["tokens_per_s"])
                results[who].append(res)
                if args.verbose:
                    print(
                        f"  round {r} {who}: {res['median_tps']:,.0f} tokens/s, val {res['val_loss']:.4f}, "
                        f"wall {res['wall_s']:.1f} s",
                        flush=True,
                    )

    def med(who: str, key: str) -> float:
        return statistics.median(res[key] for res in results[who])

    ratios = [o["median_tps"] / b["median_tps"] for o, b in zip(results["ours"], results["base"], strict=True)]
    walls = [b["wall_s"] / o["wall_s"] for o, b in zip(results["ours"], results["base"], strict=True)]
    print(
        f"train_step: ours {med('ours', 'median_tps'):,.0f} vs nanoGPT-way {med('base', 'median_tps'):,.0f} tokens/s "
        f"= {statistics.median(ratios):.2f}x (median of {args.rounds} rounds, per round {min(ratios):.2f}-"
        f"{max(ratios):.2f}x); val loss at {args.iters} ours {med('ours', 'val_loss'):.4f} vs "
        f"{med('base', 'val_loss'):.4f}; whole-run wall ours {med('ours', 'wall_s'):.1f} s vs "
        f"{med('base', 'wall_s'):.1f} s = {statistics.median(walls):.2f}x; threads {args.threads or 'default'}"
    )


if __name__ == "__main__":
    main()
