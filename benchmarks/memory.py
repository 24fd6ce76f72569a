"""Peak memory (RSS) of the CPU recipe and of GPT-2 124M sampling, against the nanoGPT-way baselines.

    python benchmarks/memory.py [--rounds 2] [--iters 300] [--corpus ../shared/data/tinyshakespeare.txt]

Every measurement is a fresh process, and its peak is the kernel's high-water mark of its address space (VmHWM in
/proc/<pid>/status, exact after fork and exec, unlike ru_maxrss), read by polling every 10 ms until it exits:
  recipe     `python run.py experiment=shakespeare_char_cpu train.max_iters=<iters>` (evaluation, checkpoint
             and logging included) against the nanoGPT-way loop of benchmarks/train_step.py over as many steps
  sampling   GPT-2 124M (random weights, fp32, batch 1): our KV-cache generation of 200 tokens after a 512-token
             prompt against nanoGPT's recompute at the longest context it reaches (711 tokens: one token from a
             711-token prompt, which is its peak) and Hugging Face's generate with its cache (for reference)

Prints one line: `memory: recipe ours <MiB> vs nanoGPT-way <MiB>; 124M sampling ours <MiB> vs ...`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from common import CORPUS, ENV, REPO, prepare_char  # benchmarks/ is on sys.path when this file runs as a script

PROMPT, NEW = 512, 200


def peak_rss_mib(cmd: list[str], cwd: str) -> float:
    """Run `cmd` and return its peak RSS in MiB (the last VmHWM read before it exits)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak = max(peak, next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            pass
        time.sleep(0.01)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr.read()[-2000:]}")
    return peak / 1024


def sampling_worker(kind: str) -> None:
    import torch

    torch.manual_seed(0)
    if kind == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = GPT2LMHeadModel(GPT2Config(attn_implementation="sdpa")).eval()
        idx = torch.randint(0, 50257, (1, PROMPT))
        hf.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            eos_token_id=None,
        )
        return
    from nanogpt.config import ModelConfig
    from nanogpt.kernels import decode_layout
    from nanogpt.model import GPT, LAST_POSITION

    model = GPT(ModelConfig(vocab_size=50257)).eval()
    if kind == "ours":
        with decode_layout(model):  # as sample.py decodes
            model.generate(torch.randint(0, 50257, (1, PROMPT)), NEW, temperature=0.0)
    else:  # nanoGPT's way at its longest context: the whole sequence through the model, last position's logits
        with torch.no_grad():
            model(torch.randint(0, 50257, (1, PROMPT + NEW - 1)), logits_at=LAST_POSITION)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--worker", choices=("ours", "recompute", "hf"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sampling_worker(args.worker)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = ["experiment=shakespeare_char_cpu", f"paths.data_dir={tmp}/data", f"data.source={args.corpus}"]
        prepare_char(f"{tmp}/data", args.corpus, tmp)
        runs = {
            "recipe": [
                sys.executable,
                str(REPO / "run.py"),
                *base,
                f"train.max_iters={args.iters}",
                f"optim.lr_decay_iters={args.iters}",
            ],
            "baseline": [
                sys.executable,
                str(REPO / "benchmarks" / "train_step.py"),
                "--baseline-worker",
                f"{tmp}/data",
                "--iters",
                str(args.iters),
            ],
            **{f"sample_{k}": [sys.executable, __file__, "--worker", k] for k in ("ours", "recompute", "hf")},
        }
        peaks: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds):
            for name, cmd in runs.items() if r % 2 == 0 else reversed(runs.items()):
                peaks[name].append(peak_rss_mib(cmd, tmp))
    m = {k: statistics.median(v) for k, v in peaks.items()}
    print(
        f"memory: recipe ({args.iters} iters) ours {m['recipe']:.0f} MiB vs nanoGPT-way {m['baseline']:.0f} MiB "
        f"({m['recipe'] / m['baseline']:.2f}x); 124M sampling ours {m['sample_ours']:.0f} MiB vs nanoGPT-way "
        f"recompute {m['sample_recompute']:.0f} MiB ({m['sample_ours'] / m['sample_recompute']:.2f}x) and "
        f"Hugging Face {m['sample_hf']:.0f} MiB; peak RSS, median of {args.rounds} rounds"
    )


if __name__ == "__main__":
    main()
