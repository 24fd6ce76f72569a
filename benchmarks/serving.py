"""serve.py under concurrent streaming clients, against one client, sample.py's decode loop and Hugging Face.

    python benchmarks/serving.py [--tokens 32] [--clients 8] [--threads 2]

GPT-2 124M shapes with random weights (saved as a run dir), fp32 on the CPU. The server runs as a subprocess
(`serve.py run=<dir> max_batch=<clients>`, `OMP_NUM_THREADS=--threads`); each client streams one greedy completion
of `--tokens` tokens over HTTP. Reported, at 1 and at `--clients` clients: aggregate tokens/s, time to first token
and the gap between tokens (median and p90 over every client's tokens). In this process, on the same threads:
`GPT.generate_stream` (sample.py's loop) on one prompt, and Hugging Face `GPT2LMHeadModel.generate` (greedy,
KV cache) on the same `--clients` requests one after another, as a server without batching would run them.
Prints one line: the ratio of aggregate tokens/s at `--clients` clients to one client's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
import torch  # noqa: E402
from helpers import KEY, save_run, start_server, stop_server  # noqa: E402

PROMPTS = ["The meaning of life is", "Once upon a time", "In 1905, Einstein", "The best way to cook rice",
           "Dear Sir,", "import numpy as np", "Breaking news:", "My favourite poem"]  # fmt: skip


def stream_one(url: str, prompt: str, tokens: int, out: dict) -> None:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    stamps = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=600) as r:  # fmt: skip
        for line in r.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.perf_counter())
    out["ttft"] = stamps[0] - start
    out["gaps"] = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out["end"] = stamps[-1]
    out["start"] = start


def clients(url: str, n: int, tokens: int) -> dict:
    results = [{} for _ in range(n)]
    threads = [threading.Thread(target=stream_one, args=(url, PROMPTS[i % 8], tokens, results[i])) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"])
    ttfts = sorted(r["ttft"] for r in results)
    p90 = lambda xs: xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return {"tok_s": n * tokens / wall, "ttft_med": statistics.median(ttfts), "ttft_p90": p90(ttfts),
            "gap_med": statistics.median(gaps), "gap_p90": p90(gaps)}  # fmt: skip


def local_baselines(run: Path, n: int, tokens: int) -> tuple[float, float]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from nanogpt.runs import load_run
    from nanogpt.tokenizer import GPT2Tokenizer

    model = load_run(str(run)).model.eval()
    enc = GPT2Tokenizer()
    x = torch.tensor([enc.encode(PROMPTS[0])])
    start = time.perf_counter()
    for _ in model.generate_stream(x, tokens, temperature=0):
        pass
    ours = tokens / (time.perf_counter() - start)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # the same shapes; its own random weights
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(n):
            ids = torch.tensor([enc.encode(PROMPTS[i % 8])])
            hf.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return ours, n * tokens / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = save_run(Path(tmp) / "gpt2", {"kind": "gpt2"}, 50257, n_layer=12, n_head=12, n_embd=768,
                       block_size=1024, vocab_size=50304, tie_embeddings=True)  # fmt: skip
        threads = {"OMP_NUM_THREADS": str(a.threads)}
        server = start_server(Path(tmp), f"run={run}", "device.device=cpu", f"max_batch={a.clients}", env=threads)
        try:
            clients(server.url, 1, 4)  # warm up
            one = clients(server.url, 1, a.tokens)
            many = clients(server.url, a.clients, a.tokens)
        finally:
            stop_server(server)
        ours, hf = local_baselines(run, a.clients, a.tokens)
    print(json.dumps({"1": one, str(a.clients): many, "sample_py_tok_s": ours, "hf_sequential_tok_s": hf}, indent=1))
    print(f"{a.clients} clients / 1 client aggregate tokens/s: {many['tok_s'] / one['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
