"""Characters, GPT-2's BPE and a BPE trained on the text itself, compared in bits per byte on tiny Shakespeare.

    python benchmarks/tokenizers_bpb.py [--corpus ../shared/data/tinyshakespeare.txt] [--iters 2000]
        [--schedule 2000] [--only char bpe4096 gpt2] [overrides]

Each tokenizer's data set is prepared from the same text (nanoGPT's split: the last tenth validates), then
`python run.py experiment=shakespeare_char_cpu` trains the same model on it: 4 layers of 128, a context of 64
tokens, 12 x 64 tokens a step, the same number of steps and the same evaluation protocol; only the embedding and
the output layer grow with the vocabulary. Val loss per token cannot compare them (a GPT-2 token is about 3 bytes,
a character 1); val bits per byte can. `--iters 500 --schedule 2000` runs the first 500 steps of the 2000-step
schedule (the same lr at every step), for GPT-2's vocabulary, whose output layer makes its steps ~8x the others'.
Prints one line per tokenizer and a summary:

    char (vocab 65, 1.000 bytes/token): best val 2.xxx bits/byte (val loss x.xxxx), 2000 steps in <s> s, ...
    tokenizers_bpb: <cpu>, same model and steps: char x.xxx, gpt2 x.xxx, bpe4096 x.xxx bits/byte
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, ENV, REPO, read_metrics  # benchmarks/ is on sys.path as a script
from tokenizer_speed import cpu_name

DATA = {"char": "data=shakespeare_char", "bpe4096": "data=shakespeare_bpe", "gpt2": "data=shakespeare"}


def run(kind: str, tmp: str, corpus: str, iters: int, schedule: int, overrides: list[str]) -> str:
    data = [DATA[kind], f"data.source={corpus}", f"paths.data_dir={tmp}/data"]
    subprocess.run([sys.executable, str(REPO / "prepare.py"), *data], cwd=tmp, env=ENV, check=True, capture_output=True)
    steps = [f"train.max_iters={iters}", f"optim.lr_decay_iters={schedule}"]
    cmd = [sys.executable, str(REPO / "run.py"), "experiment=shakespeare_char_cpu", *data, *steps, f"name={kind}"]
    cmd += overrides
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=ENV, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{kind} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    wall = time.perf_counter() - t0
    [run_dir] = [d for d in (Path(tmp) / "outputs" / kind).iterdir() if not d.is_symlink()]
    records = read_metrics(run_dir)
    meta = _meta(tmp, kind)
    evals = [r for r in records if "val_bpb" in r]
    best = min(evals, key=lambda r: r["val_bpb"])
    tps = statistics.median(r["tokens_per_s"] for r in records if "tokens_per_s" in r)
    line = (
        f"{kind} (vocab {meta['vocab_size']}, {meta['bytes_per_token']['val']:.3f} bytes/token on val): best val "
        f"{best['val_bpb']:.4f} bits/byte (val loss {best['val_loss']:.4f}, iter {best['iter']}), final "
        f"{evals[-1]['val_bpb']:.4f}; {iters} steps in {wall:.0f} s, {tps:,.0f} tokens/s"
    )
    print(line, flush=True)
    return f"{best['val_bpb']:.3f}"


def _meta(tmp: str, kind: str) -> dict:
    name = {"char": "shakespeare_char", "gpt2": "shakespeare", "bpe4096": "shakespeare_bpe"}[kind]
    return json.loads((Path(tmp) / "data" / name / "meta.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--schedule", type=int, default=None, help="steps the lr schedule decays over (default: --iters)")
    ap.add_argument("--only", nargs="*", choices=list(DATA), default=list(DATA))
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides for every run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        schedule = args.schedule or args.iters
        bpb = {kind: run(kind, tmp, args.corpus, args.iters, schedule, args.overrides) for kind in args.only}
    summary = ", ".join(f"{k} {v}" for k, v in bpb.items())
    print(f"tokenizers_bpb: {cpu_name()}, same model and {args.iters} steps: {summary} bits/byte (best val)")


if __name__ == "__main__":
    main()
