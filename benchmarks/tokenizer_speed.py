"""The trained BPE's speed on tiny Shakespeare: training a vocabulary of 8192, and encoding against GPT-2's.

    python benchmarks/tokenizer_speed.py [--corpus ../shared/data/tinyshakespeare.txt] [--vocab 8192] [--rounds 5]

Trains the byte-level BPE as `prepare.py data.tokenizer=bpe` does (tokenizers' trainer on the whole text, in
64K-character pieces), then encodes the whole text with it and with tiktoken's GPT-2, alternating, `--rounds`
times each, one call each on one thread (`encode_ordinary` on the whole text: the same text and the same core for
both). tokenizers' own encoder reading the same tokenizer.json is timed too: it is why encoding runs on tiktoken.
Prints one line:

    tokenizer_speed: <cpu>: train 8192 in <s> s; encode MB/s (median of 5): ours <x>, tiktoken GPT-2 <y> (<x/y>x),
    tokenizers <z>
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from common import CORPUS  # benchmarks/ is on sys.path as a script; it puts the repo there too

os.environ.setdefault("NANOGPT_OFFLINE", "1")  # GPT-2 from the packaged BPE files, never a network wait

from nanogpt import bpe
from nanogpt.config import GPT2_PATTERN
from nanogpt.tokenizer import BPETokenizer, gpt2_encoding


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x{len(names)}"
    except (OSError, IndexError):
        return platform.processor() or "unknown CPU"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        text = f.read()
    mb = len(text.encode("utf-8")) / 1e6

    train_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        definition = bpe.train(bpe.text_chunks(text), args.vocab, GPT2_PATTERN)
        train_s.append(time.perf_counter() - t0)
    ours = BPETokenizer(definition)
    gpt2 = gpt2_encoding()
    from tokenizers import Tokenizer

    reference = Tokenizer.from_str(definition)
    assert ours.encode_ordinary(text) == reference.encode(text).ids  # the same tokens, whichever encoder
    times: dict[str, list[float]] = {"ours": [], "gpt2": [], "tokenizers": []}
    for _ in range(args.rounds):  # alternating, so that the machine's drift falls on all three alike
        times["ours"].append(timed(lambda: ours.encode_ordinary(text)))
        times["gpt2"].append(timed(lambda: gpt2.encode_ordinary(text)))
        times["tokenizers"].append(timed(lambda: reference.encode(text)))
    rate = {k: mb / statistics.median(v) for k, v in times.items()}
    print(
        f"tokenizer_speed: {cpu_name()}: train {args.vocab} in {statistics.median(train_s):.2f} s "
        f"(median of 3); encode MB/s (median of {args.rounds}): ours {rate['ours']:.1f}, tiktoken GPT-2 "
        f"{rate['gpt2']:.1f} ({rate['ours'] / rate['gpt2']:.2f}x), tokenizers {rate['tokenizers']:.1f}"
    )


if __name__ == "__main__":
    main()
