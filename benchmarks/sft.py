"""An SFT step against a pretraining step of the same model on the same tokens, on the CPU.

    python benchmarks/sft.py [--rounds 2] [--iters 150]

Prepares the demonstration's conversations (`data=chat_reverse`, packed rows + loss masks), and a copy of the same
token files without the chat layout (plain text to the loop: windows anywhere, every target counted). Then runs
`python run.py experiment=chat_reverse_cpu` on each, alternating in fresh processes for `--rounds` rounds, and
compares the median ms/iter of their log steps past the first. The SFT side pays for the masks: reading them,
masking the targets, weighting each micro-batch by its answer tokens.

Prints one line: `sft: SFT <tok/s> vs pretraining <tok/s> = <ratio> (median of N rounds), padding <p>%`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ENV, OURS_ITER, REPO  # benchmarks/ is on sys.path as a script

ROWS, BLOCK = 16, 128  # the preset's batch: tokens per step = ROWS x BLOCK


def run(cwd: str, data_dir: str, iters: int, *overrides: str) -> float:
    """Median ms/iter of one run.py run's log steps (the first left out)."""
    cmd = [
        sys.executable, str(REPO / "run.py"), "experiment=chat_reverse_cpu", f"paths.data_dir={data_dir}",
        f"train.max_iters={iters}", "train.eval_interval=100000", "train.eval_iters=1", "train.log_interval=5",
        *overrides,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, check=True)
    times = [float(ms) for it, ms in OURS_ITER.findall(proc.stdout + proc.stderr) if int(it) > 0]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(
            [sys.executable, str(REPO / "prepare.py"), "data=chat_reverse", f"paths.data_dir={data}"],
            cwd=tmp, env=ENV, capture_output=True, check=True,
        )  # fmt: skip
        chat, plain = data / "chat_reverse", data / "plain_copy"
        plain.mkdir()
        for name in ("train.bin", "val.bin", "tokenizer.json"):
            shutil.copy(chat / name, plain / name)
        meta = json.loads((chat / "meta.json").read_text())
        (plain / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "chat"}))
        pre = ["data.name=plain_copy", "data.format=text", "data.source=null"]
        sft_ms, pre_ms = [], []
        for _ in range(args.rounds):
            sft_ms.append(run(tmp, str(data), args.iters))
            pre_ms.append(run(tmp, str(data), args.iters, *pre))
    tokens = ROWS * BLOCK
    sft, pretrain = tokens / statistics.median(sft_ms) * 1000, tokens / statistics.median(pre_ms) * 1000
    padding = 100 * meta["chat"]["padding"]["train"]
    print(
        f"sft: SFT {sft:,.0f} tok/s vs pretraining {pretrain:,.0f} tok/s = {sft / pretrain:.3f} "
        f"(median of {args.rounds} rounds), padding {padding:.1f}%"
    )


if __name__ == "__main__":
    main()
