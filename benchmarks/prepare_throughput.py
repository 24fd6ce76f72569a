"""Data preparation speed and memory: ours against tiktoken's own `encode_ordinary_batch`, on the same documents.

    python benchmarks/prepare_throughput.py [--mode hf|stream] [--sizes 50 100] [--repeats 3] [--num-proc N]

Builds stand-in corpora in a temp dir (tiny Shakespeare cut into ~4 KB documents, repeated up to each size), then
on each corpus times, alternately:

- tiktoken: `encode_ordinary_batch(documents, num_threads=N)` on the documents already in memory;
- ours, in a fresh process whose memory is polled from /proc every 20 ms (the peak RSS of its largest process,
  VmHWM, which counts the pages of a memory-mapped corpus it has mapped, and the peak anonymous memory of all its
  processes together, RssAnon: what the kernel cannot drop), imports excluded:
  - `--mode hf` (OpenWebText's path): `prepare_hf_dataset` with num_proc=N on the corpus saved with `datasets`'
    save_to_disk, as a downloaded data set sits in its cache (load, split, tokenize, write train.bin/val.bin);
  - `--mode stream` (FineWeb's path): `prepare_stream` with num_proc=N threads on the corpus as a folder of Parquet
    files read with streaming=True, as from the hub (read, tokenize, write 10M-token llm.c shards, progress.json
    after each).

Prints one line: `prepare_throughput (<mode>): ours <MB/s> vs tiktoken <MB/s> ...: <ratio> ...`, medians over the
repeats. The ratio is the median of each pair's, so a shared machine's load falls on both; the CPU-time ratio
(tiktoken's CPU seconds over ours) is the overhead with parallelism taken out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, installed or not
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NANOGPT_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# Run in a fresh process: prepare one corpus and report the time of the call alone (imports excluded).
_OURS = """
import json, resource, sys, time
from nanogpt.config import DataConfig
from nanogpt.data.documents import prepare_hf_dataset

def cpu():  # this process and its pool workers, once they have exited
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)

data = DataConfig(name="owt", tokenizer="gpt2", dataset=sys.argv[1], val_fraction=0.0005, num_proc=int(sys.argv[3]))
t0, c0 = time.perf_counter(), cpu()
prepare_hf_dataset(data, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": cpu() - c0}))
"""
# The same for the streaming path. `datasets`' streaming imports torch: a real preparation pays that once.
_OURS_STREAM = """
import json, resource, sys, time
import datasets, torch
from nanogpt.config import DataConfig
from nanogpt.data.stream import prepare_stream

def cpu():
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)

data = DataConfig(name="fw", tokenizer="gpt2", dataset=sys.argv[1], streaming=True, val_tokens=100_000,
                  shard_tokens=10_000_000, num_proc=int(sys.argv[3]))
t0, c0 = time.perf_counter(), cpu()
prepare_stream(data, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": cpu() - c0}))
"""


def build_corpus(path: str, megabytes: int, corpus: Path) -> int:
    """A save_to_disk data set of ~4 KB documents totalling `megabytes`; returns its size in UTF-8 bytes."""
    from datasets import Dataset

    paragraphs = corpus.read_text(encoding="utf-8").split("\n\n")
    docs, doc, size, n = [], [], 0, 0
    target = megabytes * 1_000_000
    while size < target:
        for p in paragraphs:
            doc.append(p)
            if sum(map(len, doc)) >= 4000:
                text = f"Document {n}.\n" + "\n\n".join(doc)
                docs.append(text)
                size += len(text.encode("utf-8"))
                doc, n = [], n + 1
                if size >= target:
                    break
    Dataset.from_dict({"text": docs}).save_to_disk(path)
    parquet = Path(path + "-parquet")  # the same documents as the hub serves them: Parquet files
    parquet.mkdir()
    for i in range(0, len(docs), 5000):
        Dataset.from_dict({"text": docs[i : i + 5000]}).to_parquet(str(parquet / f"{i // 5000:03d}.parquet"))
    return size


def tiktoken_run(path: str, num_threads: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of encode_ordinary_batch on the corpus's documents, and the tokens it makes plus
    one end-of-text per document (what ours writes)."""
    from datasets import load_from_disk

    from nanogpt.tokenizer import gpt2_encoding

    texts = load_from_disk(path)[:]["text"]  # a list of str in memory, not a lazy column
    assert isinstance(texts, list)
    enc = gpt2_encoding()
    t0, c0 = time.perf_counter(), _cpu_self()
    ids = enc.encode_ordinary_batch(texts, num_threads=num_threads)
    seconds, cpu = time.perf_counter() - t0, _cpu_self() - c0
    return seconds, cpu, sum(map(len, ids)) + len(ids)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")


def _cpu_self() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return u.ru_utime + u.ru_stime


def _tree_memory(root: int) -> tuple[int, int]:
    """Of `root` and all its descendants, from /proc: the largest peak RSS (VmHWM) and the total anonymous
    resident memory (RssAnon), both KiB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    peak, anon, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                status = {line.split(":")[0]: line.split()[1] for line in f if line.startswith(("VmHWM", "RssAnon"))}
        except OSError:
            continue
        peak = max(peak, int(status.get("VmHWM", 0)))
        anon += int(status.get("RssAnon", 0))
    return peak, anon


def ours(path: str, out: str, num_proc: int, mode: str) -> tuple[float, float, int, int]:
    """Wall and CPU seconds of our preparation (all its processes); the peak RSS of its largest process and
    the peak anonymous memory of all its processes together, polled every 20 ms (MiB)."""
    script, path = (_OURS, path) if mode == "hf" else (_OURS_STREAM, path + "-parquet")
    proc = subprocess.Popen(
        [sys.executable, "-c", script, path, out, str(num_proc)],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peak_rss, peak_anon, done = 0, 0, threading.Event()

    def poll() -> None:
        nonlocal peak_rss, peak_anon
        while not done.is_set():
            rss, anon = _tree_memory(proc.pid)
            peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
            done.wait(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    stdout, _ = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"our preparation ({mode}) failed (exit {proc.returncode})")
    report = json.loads(stdout.strip().splitlines()[-1])
    return report["seconds"], report["cpu"], peak_rss // 1024, peak_anon // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["hf", "stream"], default="hf", help="prepare_hf_dataset or prepare_stream")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 100], help="corpus sizes in MB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-proc", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    args = ap.parse_args()
    os.environ.update(ENV)
    n = args.num_proc
    load_before = os.getloadavg()[0]
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mb in sorted(args.sizes):
            path = os.path.join(tmp, f"corpus-{mb}")
            size = build_corpus(path, mb, args.corpus)
            runs = []
            for r in range(args.repeats):  # interleaved, so both see the same load on a shared machine
                t_wall, t_cpu, expected = tiktoken_run(path, n)
                out = os.path.join(tmp, f"out-{mb}-{r}")
                o_wall, o_cpu, rss, anon = ours(path, out, n, args.mode)
                with open(os.path.join(out, "meta.json")) as f:
                    meta = json.load(f)
                if meta["train_tokens"] + meta["val_tokens"] != expected:
                    raise SystemExit(
                        f"token counts differ: ours {meta['train_tokens'] + meta['val_tokens']}, tiktoken {expected}"
                    )
                shutil.rmtree(out)
                runs.append(
                    {"t_wall": t_wall, "t_cpu": t_cpu, "o_wall": o_wall, "o_cpu": o_cpu, "rss": rss, "anon": anon}
                )
                print(
                    f"  {mb} MB, repeat {r + 1}: tiktoken {size / t_wall / 1e6:.2f} MB/s ({t_cpu:.1f} CPU s), "
                    f"ours {size / o_wall / 1e6:.2f} MB/s ({o_cpu:.1f} CPU s), ratio {t_wall / o_wall:.0%}, "
                    f"peak RSS {rss} MiB, peak anonymous {anon} MiB, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            sizes[mb] = (size, runs)
    mb = max(sizes)
    size, runs = sizes[mb]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    paired = statistics.median(r["t_wall"] / r["o_wall"] for r in runs)
    cpu_ratio = statistics.median(r["t_cpu"] / r["o_cpu"] for r in runs)
    mem = {m: (max(r["rss"] for r in rs), max(r["anon"] for r in rs)) for m, (_, rs) in sizes.items()}
    small = min(mem)
    grows = mem[mb][0] > mem[small][0] + 32 or mem[mb][1] > mem[small][1] + 32
    import tiktoken
    import torch

    print(
        f"prepare_throughput ({args.mode}): ours {size / med['o_wall'] / 1e6:.2f} MB/s vs tiktoken "
        f"encode_ordinary_batch {size / med['t_wall'] / 1e6:.2f} MB/s on {mb} MB with {n} processes/threads: "
        f"{paired:.0%} "
        f"(median of {len(runs)} paired runs), tiktoken's CPU seconds {cpu_ratio:.0%} of ours; peak RSS / anonymous "
        + ", ".join(f"{m} MB: {rss} / {anon} MiB" for m, (rss, anon) in sorted(mem.items()))
        + f" ({'GROWS' if grows else 'flat'} with the corpus); load avg {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}; {cpu_name()}; tiktoken {tiktoken.__version__}, torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
