"""Reading training batches from shards against one memory-mapped file.

    python benchmarks/batch_reading.py [--tokens 200_000_000] [--shards 20] [--rounds 7]

Writes the same random GPT-2 tokens (uint16) once as one train.bin and once as `--shards` llm.c-format shards,
each with its meta.json, then times drawing micro-batches (`Batches.train`: the seeded starts, the gather, the
int64 tensors x and y) for GPT-2 shapes, 1024-token sequences, batch 12 (nanoGPT's) and 64 (build-nanogpt's):

- `one file`: our reader on train.bin (one memmap);
- `shards`: our reader on the shards (a memmap per shard, windows across a shard boundary read from both);
- `previous`: this repo's reader before shards, on train.bin: one np.memmap, np.stack of the rows, astype(int64).

Rounds alternate the three, 200 micro-batches each, all files in the page cache (what differs between them is
the CPU work of reading, not the disk). Prints one line: shards / one file per micro-batch, medians of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nanogpt.data import llmc_shards as llmc  # noqa: E402
from nanogpt.data.batches import Batches  # noqa: E402

MICRO = 200  # micro-batches per timing


def write_sets(root: Path, tokens: int, shards: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    one, sharded = root / "one", root / "sharded"
    one.mkdir()
    sharded.mkdir()
    val = rng.integers(0, 50257, 1_000_000, dtype=np.uint16)
    meta = {"tokenizer": {"kind": "gpt2"}, "vocab_size": 50257, "dtype": "uint16", "val_tokens": len(val)}
    cuts = np.linspace(0, tokens, shards + 1).astype(np.int64)
    entries = []
    with open(one / "train.bin", "wb") as f:
        for i in range(shards):
            part = rng.integers(0, 50257, int(cuts[i + 1] - cuts[i]), dtype=np.uint16)
            f.write(part.tobytes())
            llmc.write_shard(str(sharded / f"train_{i:06d}.bin"), part)
            entries.append({"file": f"train_{i:06d}.bin", "tokens": len(part)})
    val.tofile(one / "val.bin")
    llmc.write_shard(str(sharded / "val_000000.bin"), val)
    (one / "meta.json").write_text(json.dumps({**meta, "train_tokens": tokens}))
    shard_meta = {"format": "llm.c", "train": entries, "val": [{"file": "val_000000.bin", "tokens": len(val)}]}
    (sharded / "meta.json").write_text(json.dumps({**meta, "train_tokens": tokens, "shards": shard_meta}))
    return str(one), str(sharded)


def ours(path: str, batch: int, start_step: int) -> float:
    """Seconds per micro-batch of Batches.train over MICRO micro-batches (20 steps of 10)."""
    b = Batches(path, 1024, batch, 10, seed=1337, device=torch.device("cpu"), vocab_size=50304)
    t0 = time.perf_counter()
    for step in range(start_step, start_step + MICRO // 10):
        for micro in range(10):
            b.train(step, micro)
    return (time.perf_counter() - t0) / MICRO


def previous(path: str, batch: int, start_step: int) -> float:
    """The reader before shards (one memmap, np.stack of the rows, astype), same starts, same tensors."""
    data = np.memmap(os.path.join(path, "train.bin"), dtype=np.uint16, mode="r")
    t0 = time.perf_counter()
    for step in range(start_step, start_step + MICRO // 10):
        starts = np.random.default_rng([1337, 0, step]).integers(0, len(data) - 1024, size=batch * 10)
        for micro in range(10):
            rows = starts[micro * batch : (micro + 1) * batch]
            buf = torch.from_numpy(np.stack([data[i : i + 1025] for i in rows]).astype(np.int64))
            buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # x and y, as Batches makes them
    return (time.perf_counter() - t0) / MICRO


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=200_000_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        one, sharded = write_sets(Path(tmp), args.tokens, args.shards)
        for path in (one, sharded):  # into the page cache
            for f in Path(path).iterdir():
                f.read_bytes()
        figures = {}
        for batch in (12, 64):
            times: dict[str, list[float]] = {"one": [], "shards": [], "previous": []}
            for r in range(args.rounds):  # alternating, so the machine's load falls on all three
                times["one"].append(ours(one, batch, r * 1000))
                times["shards"].append(ours(sharded, batch, r * 1000))
                times["previous"].append(previous(one, batch, r * 1000))
            med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
            ratio = statistics.median(s / o for s, o in zip(times["shards"], times["one"], strict=True))
            figures[batch] = (med, ratio)
            print(f"  batch {batch}: " + ", ".join(f"{k} {v:.0f} us" for k, v in med.items()), flush=True)
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    print(
        "batch_reading: shards / one file per micro-batch "
        + ", ".join(
            f"batch {b}x1024: {ratio:.2f} ({m['shards']:.0f} vs {m['one']:.0f} us; before shards "
            f"{m['previous']:.0f} us)"
            for b, (m, ratio) in figures.items()
        )
        + f"; {args.tokens:,} tokens in {args.shards} shards, medians of {args.rounds} alternating rounds; "
        f"load {load:.1f} -> {os.getloadavg()[0]:.1f}; {cpu}; torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
