"""serve.py under load, as its users meet it: many clients at once over HTTP, some of them hanging up mid-stream.

A bounded load (LOAD requests from CLIENTS concurrent clients: greedy and sampled, streamed and not, a few with n
choices, and every tenth one cancelled by its client after a few events) must end with every completed request
correct and whole, no error but the cancelled ones, no row or queue slot left taken, and the server's memory back
to what it held when idle. Greedy replies are checked against the model decoding each prompt alone in this process
(`helpers.greedy_near_ties`); the near-ties that rule allows are counted and reported, never passed over."""

from __future__ import annotations

import json
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from helpers import CHARS, KEY, Server, greedy_near_ties, rss_kib, save_run, start_server, stop_server

LOAD, CLIENTS = 200, 16
CANCEL_EVERY = 10  # request i is cancelled mid-stream when i % CANCEL_EVERY == CANCEL_EVERY - 1
# Idle memory may still grow a little after the warm-up (allocator pools, uvicorn's buffers), never by a load's worth.
RSS_MARGIN_KIB = 24 * 1024


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("load") / "loadrun", {"kind": "char", "chars": CHARS}, len(CHARS),
                    block_size=256)  # fmt: skip


@dataclass
class Job:
    """One client request and, once answered, what came back."""

    index: int
    prompt: str
    max_tokens: int
    kind: str  # greedy | greedy_stream | sampled (n=2, seeded) | cancel (streamed, hung up after a few events)
    texts: list[str] | None = None
    finish: list[str | None] | None = None
    completion_tokens: int = 0


def jobs(count: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 30)))
        kind = "cancel" if i % CANCEL_EVERY == CANCEL_EVERY - 1 else ("greedy", "greedy_stream", "sampled")[i % 3]
        out.append(Job(i, prompt, 150 if kind == "cancel" else rng.randint(8, 40), kind))
    return out


def ask(server: Server, client: openai.OpenAI, job: Job) -> Job:
    if job.kind == "cancel":
        body = {"model": "loadrun", "prompt": job.prompt, "max_tokens": job.max_tokens, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
            assert r.status_code == 200, r.read()
            events = (line for line in r.iter_lines() if line.startswith("data: {"))
            next(events), next(events)  # in the batch, a few tokens out: hang up
        return job
    if job.kind == "greedy_stream":
        usage = {"include_usage": True}
        chunks = list(client.completions.create(model="loadrun", prompt=job.prompt, max_tokens=job.max_tokens,
                                                temperature=0, stream=True, stream_options=usage))  # fmt: skip
        job.texts = ["".join(c.choices[0].text for c in chunks if c.choices)]
        job.finish = [[c.choices[0].finish_reason for c in chunks if c.choices][-1]]
        job.completion_tokens = chunks[-1].usage.completion_tokens
        return job
    n, temperature = (2, 1.0) if job.kind == "sampled" else (1, 0.0)
    r = client.completions.create(model="loadrun", prompt=job.prompt, max_tokens=job.max_tokens, n=n,
                                  temperature=temperature, seed=job.index)  # fmt: skip
    job.texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    job.finish = [c.finish_reason for c in r.choices]
    job.completion_tokens = r.usage.completion_tokens
    return job


def health(server: Server) -> dict:
    return httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()


def settled_rss(server: Server) -> int:
    """The server's resident memory once it has nothing active or queued (cancelled rows leave at a next step)."""
    deadline = time.monotonic() + 10
    while (h := health(server))["active"] or h["queued"]:
        assert time.monotonic() < deadline, f"the server still holds requests: {h}"
        time.sleep(0.05)
    time.sleep(0.2)
    return rss_kib(server.proc.pid)


def run_load(server: Server, load: list[Job]) -> list[Job]:
    client = server.client()
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda job: ask(server, client, job), load))


@pytest.mark.slow
def test_load_held_and_nothing_lost(char_run, record_property):
    s = start_server(char_run.parent, f"run={char_run}", "max_batch=8", "max_queue=64", "device.device=cpu")
    try:
        run_load(s, jobs(2 * CLIENTS, seed=1))  # warm-up: the idle level is that of a server that has worked
        idle, steps = settled_rss(s), health(s)["steps"]
        start = time.monotonic()
        done = run_load(s, jobs(LOAD, seed=0))
        seconds = time.monotonic() - start
        after, steps = settled_rss(s), health(s)["steps"] - steps
    finally:
        stop_server(s)
    assert "Traceback" not in s.log.read_text()
    near_ties, checked = check_replies(char_run, done)
    print(
        f"\nload: {LOAD} requests from {CLIENTS} clients in {seconds:.1f} s, {steps} steps; {checked} greedy "
        f"tokens checked, {near_ties} near-ties; server RSS {idle // 1024} MiB idle, {after // 1024} MiB after"
    )
    record_property("near_ties", near_ties)
    record_property("greedy_tokens_checked", checked)
    record_property("rss_kib_idle_after", (idle, after))
    generated = sum(job.completion_tokens for job in done)
    assert steps < generated / 2, f"{steps} steps for {generated} tokens: the requests were not batched"
    assert after <= idle + RSS_MARGIN_KIB, f"the server kept {(after - idle) // 1024} MiB after the load"


def check_replies(run: Path, done: list[Job]) -> tuple[int, int]:
    """Every completed request whole and in the vocabulary, every greedy one the model's own solo decode (up to
    near-ties): returns (near-ties, greedy tokens checked)."""
    from nanogpt.config import SampleConfig
    from nanogpt.sampling import load_for_sampling

    model, tokenizer, vocab = load_for_sampling(SampleConfig(run=str(run)))
    model.eval()
    near_ties = checked = 0
    for job in done:
        if job.kind == "cancel":
            continue
        n = 2 if job.kind == "sampled" else 1
        assert job.finish == ["length"] * n, job  # no stop strings, no end-of-text: every choice runs to max_tokens
        assert job.completion_tokens == n * job.max_tokens, job
        for text in job.texts:
            assert len(text) == job.max_tokens and set(text) <= set(CHARS), job
        if job.kind != "sampled":
            served = tokenizer.encode(job.texts[0])
            near_ties += greedy_near_ties(model, tokenizer.encode(job.prompt), served, vocab)
            checked += len(served)
    return near_ties, checked


def test_the_near_tie_rule_counts_ties_and_refuses_other_differences():
    """`greedy_near_ties` against an exact tie (two tokens with the same output row) and a token far from the top."""
    import torch
    from helpers import tiny_gpt

    model = tiny_gpt(tie_embeddings=False)
    prompt = [1, 2, 3]
    solo = model.generate(torch.tensor([prompt]), 6, temperature=0)[0, 3:].tolist()
    assert greedy_near_ties(model, prompt, solo, 101) == 0
    with torch.no_grad():  # another token's logits become the first greedy token's, everywhere
        pair = [solo[0], (solo[0] + 1) % 101]
        model.lm_head.weight[pair[1]] = model.lm_head.weight[pair[0]]
        best = int(model(torch.tensor([prompt]))[0][0, -1].argmax())
    assert best in pair and greedy_near_ties(model, prompt, [pair[1 - pair.index(best)]], 101) == 1
    with torch.no_grad():
        worst = int(model(torch.tensor([prompt]))[0][0, -1].argmin())
    with pytest.raises(AssertionError, match="logits .* apart"):
        greedy_near_ties(model, prompt, [worst], 101)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    """A run whose replies can be thousands of tokens long: seconds of decoding, long past a test's next steps."""
    return save_run(tmp_path_factory.mktemp("long") / "queuerun", {"kind": "char", "chars": CHARS}, len(CHARS),
                    block_size=8192)  # fmt: skip


@pytest.mark.slow
def test_a_full_queue_is_a_503_and_keeps_what_it_holds(long_run):
    """max_batch=1, max_queue=1: one request decoding, one queued, a third refused with 503 at once (the first two
    are far from done: thousands of tokens each); once the clients of the first two hang up, the server serves again."""
    s = start_server(long_run.parent, f"run={long_run}", "max_batch=1", "max_queue=1", "device.device=cpu")
    client = s.client()
    long = {"model": "queuerun", "prompt": "Go", "max_tokens": 8000, "stream": True}
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with (
            httpx.stream("POST", f"{s.url}/v1/completions", json=long, headers=auth, timeout=60) as first,
            httpx.stream("POST", f"{s.url}/v1/completions", json=long, headers=auth, timeout=60) as second,
        ):
            # Kept until the end: a line iterator closed early closes its connection, a hang-up.
            lines = first.iter_lines()
            assert next(lines).startswith("data: {")  # decoding
            assert first.status_code == second.status_code == 200
            assert (health(s)["active"], health(s)["queued"]) == (1, 1)
            with pytest.raises(openai.InternalServerError) as refused:
                client.completions.create(model="queuerun", prompt="Hi", max_tokens=4)
            still = health(s)
            assert (still["active"], still["queued"]) == (1, 1), "the first two ended before the third was refused"
        assert refused.value.status_code == 503
        assert refused.value.body["code"] == "queue_full" and "queue is full" in refused.value.body["message"]
        settled_rss(s)  # both hung up: their row and their queue slot are free again
        assert client.completions.create(model="queuerun", prompt="Hi", max_tokens=4).usage.completion_tokens == 4
    finally:
        stop_server(s)


@pytest.mark.slow
def test_sigterm_ends_what_outlasts_the_grace_period_with_an_error_and_done(long_run):
    """SIGTERM with shutdown_timeout=1: a stream still decoding after a second, one still queued, and a non-streaming
    request still queued each get a last answer saying the server shut down (an error object, then [DONE], or a 503)
    rather than a connection closed mid-stream, and the server exits 0 soon after."""
    s = start_server(long_run.parent, f"run={long_run}", "max_batch=1", "max_queue=2", "device.device=cpu",
                     "shutdown_timeout=1")  # fmt: skip
    long = {"model": "queuerun", "prompt": "Go", "max_tokens": 8000, "stream": True}
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with (
            httpx.stream("POST", f"{s.url}/v1/completions", json=long, headers=auth, timeout=60) as first,
            httpx.stream("POST", f"{s.url}/v1/completions", json=long, headers=auth, timeout=60) as second,
            ThreadPoolExecutor(1) as pool,
        ):
            lines = first.iter_lines()
            assert next(lines).startswith("data: {")
            third = pool.submit(httpx.post, f"{s.url}/v1/completions", json={**long, "stream": False}, headers=auth,
                                timeout=60)  # fmt: skip
            deadline = time.monotonic() + 10
            while health(s)["queued"] < 2:
                assert time.monotonic() < deadline, health(s)
                time.sleep(0.01)
            signalled = time.monotonic()
            s.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
            queued = [line for line in second.iter_lines() if line]
            refused = third.result()
        code = s.proc.wait(timeout=20)
        waited = time.monotonic() - signalled
    finally:
        stop_server(s)
    assert code == 0 and "Traceback" not in s.log.read_text()
    assert 1.0 <= waited < 10, waited
    for stream in (rest, queued):
        assert stream[-1] == "data: [DONE]"
        assert json.loads(stream[-2][len("data: ") :])["error"]["code"] == "server_shutdown", stream[-2:]
    assert len(rest) > 3  # the first decoded through the grace period: chunks, then the error and [DONE]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutdown"
