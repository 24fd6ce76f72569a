"""The CPU recipe on the real corpus: ms/iter, tokens/s and the val loss at 2000 iters.

    python benchmarks/train_cpu.py [--corpus ../shared/data/tinyshakespeare.txt] [extra run.py overrides]

Prints one line: `train_cpu: <ms>/iter median, <tok/s> tokens/s, val loss <v> at iter <n>, wall <s> s`.
nanoGPT reports val 1.88 for this recipe (its README, "I'm on a macbook").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, ENV, REPO, prepare_char, read_metrics  # benchmarks/ is on sys.path as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("overrides", nargs="*", help="extra run.py overrides, e.g. train.max_iters=500")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = ["experiment=shakespeare_char_cpu", f"paths.data_dir={tmp}/data", f"data.source={args.corpus}"]
        prepare_char(f"{tmp}/data", args.corpus, tmp)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(REPO / "run.py"), *base, *args.overrides],
            cwd=tmp,
            env=ENV,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        [run] = [p for p in (Path(tmp) / "outputs" / "shakespeare_char_cpu").iterdir() if not p.is_symlink()]
        records = read_metrics(run)
    steps = [r for r in records if "tokens_per_s" in r][10:]  # past warm-up
    tps = statistics.median(r["tokens_per_s"] for r in steps)
    last_eval = [r for r in records if "val_loss" in r][-1]
    ms = 1000 * 12 * 64 / tps
    print(
        f"train_cpu: {ms:.1f} ms/iter median, {tps:,.0f} tokens/s, val loss {last_eval['val_loss']:.4f} "
        f"at iter {last_eval['iter']}, wall {wall:.0f} s"
    )


if __name__ == "__main__":
    main()
