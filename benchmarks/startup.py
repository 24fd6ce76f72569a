"""Start-up: `python run.py` to its first training step and `python sample.py` to its first token, against the
time of `python -c "import torch"` measured alternately in the same run.

    python benchmarks/startup.py [--rounds 5] [--corpus ../shared/data/tinyshakespeare.txt] [--compiled]

run.py: the CPU recipe (`experiment=shakespeare_char_cpu`, with `train.eval_iters=1` so the evaluation at iter 0
weighs one batch per split), timed from the launch to the moment its first step's record lands in metrics.jsonl
(polled every 2 ms). The nanoGPT-way loop of benchmarks/train_step.py (a plain script: import torch and numpy,
build the model and AdamW, evaluate one batch per split, step) is timed the same way. sample.py: from a checkpoint
of that recipe, `max_new_tokens=1`, timed to the moment the generated character appears on its stdout. Also checks
that neither path imports transformers, datasets, wandb, tiktoken or lm_eval (`python -X importtime`). Also times
`python -c "import torch, torch._dynamo"`: the floor of any training script, as torch.optim's optimizers import
torch._dynamo when built (`torch._disable_dynamo`), the nanoGPT-way one included. `--compiled` also
times run.py with `device.compile=true` on a warm Inductor cache (filled by one compiled run first, in a temporary
TORCHINDUCTOR_CACHE_DIR) to its first step: what a compiled run adds to start-up once its graphs are cached.

Prints one line: `startup: import torch <s>; run.py to first step <s> (+<s>; ...); sample.py to first token ...`,
with the load average before and after.
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

from common import CORPUS, ENV, REPO, prepare_char  # benchmarks/ is on sys.path when this file runs as a script
from train_step import run_baseline

HEAVY = ("transformers", "datasets", "wandb", "tiktoken", "lm_eval")


def time_import_torch(cwd: str, modules: str = "torch") -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], cwd=cwd, env=ENV, check=True)
    return time.perf_counter() - t0


def time_to_first_step(args: list[str], cwd: str, outputs: Path) -> float:
    """Seconds from launching run.py to its first step's record in metrics.jsonl; the run is then stopped."""
    before = set(outputs.iterdir()) if outputs.exists() else set()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:
            new = [p for p in outputs.iterdir() if p not in before and not p.is_symlink()] if outputs.exists() else []
            metrics = new[0] / "metrics.jsonl" if new else None
            if metrics is not None and metrics.exists() and '"loss"' in metrics.read_text():
                return time.perf_counter() - t0
            if proc.poll() is not None:
                raise SystemExit(f"run.py ended before its first step:\n{proc.stderr.read()[-2000:]}")
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()


def time_to_first_token(args: list[str], cwd: str, prompt: str) -> float:
    """Seconds from launching sample.py to the first generated character on its stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "sample.py"), *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    seen = b""
    try:
        while len(seen) <= len(prompt.encode()):
            chunk = proc.stdout.read1(4096)
            if not chunk:
                raise SystemExit("sample.py ended before its first token")
            seen += chunk
        return time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()


def heavy_imports(script: str, args: list[str], cwd: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / script), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    names = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return sorted(n for n in names if n.split(".")[0] in HEAVY)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compiled", action="store_true", help="also time a warm compiled run.py to its first step")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        base = ["experiment=shakespeare_char_cpu", f"paths.data_dir={tmp}/data", f"data.source={args.corpus}"]
        prepare_char(f"{tmp}/data", args.corpus, tmp)
        # A checkpoint to sample from: two steps of the recipe.
        subprocess.run(
            [
                sys.executable,
                str(REPO / "run.py"),
                *base,
                "train.max_iters=2",
                "train.eval_iters=1",
                "optim.warmup_iters=1",
                "optim.lr_decay_iters=2",
                "name=ckpt",
            ],
            cwd=tmp,
            env=ENV,
            check=True,
            capture_output=True,
        )
        run_dir = str(Path(tmp) / "outputs" / "ckpt" / "latest")
        run_args = [*base, "train.eval_iters=1"]
        sample_args = [f"run={run_dir}", "start=ROMEO:", "num_samples=1", "max_new_tokens=1"]
        outputs = Path(tmp) / "outputs" / "shakespeare_char_cpu"
        times: dict[str, list[float]] = {"torch": [], "dynamo": [], "run": [], "base": [], "sample": [], "compiled": []}
        if args.compiled:
            ENV["TORCHINDUCTOR_CACHE_DIR"] = f"{tmp}/inductor"
            time_to_first_step([*run_args, "device.compile=true"], tmp, outputs)  # fills the cache
        for _ in range(args.rounds):
            times["torch"].append(time_import_torch(tmp))
            times["dynamo"].append(time_import_torch(tmp, "torch, torch._dynamo"))
            times["run"].append(time_to_first_step(run_args, tmp, outputs))
            if args.compiled:
                times["compiled"].append(time_to_first_step([*run_args, "device.compile=true"], tmp, outputs))
            times["base"].append(run_baseline(f"{tmp}/data", 1, tmp, eval_iters=1)["first_step_s"])
            times["sample"].append(time_to_first_token(sample_args, tmp, "ROMEO:"))
        heavy = heavy_imports(
            "run.py",
            [*base, "train.max_iters=1", "train.eval_iters=1", "optim.warmup_iters=1", "optim.lr_decay_iters=1"],
            tmp,
        )
        heavy += heavy_imports("sample.py", sample_args, tmp)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    compiled = ""
    if args.compiled:
        compiled = f"warm compiled run.py {med['compiled']:.2f} s (+{med['compiled'] - med['run']:.2f} s); "
    print(
        f"startup: import torch {med['torch']:.2f} s; run.py to first step {med['run']:.2f} s "
        f"(+{med['run'] - med['torch']:.2f} s; nanoGPT-way loop {med['base']:.2f} s; import torch + torch._dynamo, "
        f"which any torch.optim optimizer pulls in, {med['dynamo']:.2f} s); "
        f"sample.py to first token {med['sample']:.2f} s "
        f"(+{med['sample'] - med['torch']:.2f} s); {compiled}heavy imports: {', '.join(heavy) or 'none'}; "
        f"median of {args.rounds} rounds, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
