"""serve.py as its users meet it: a subprocess on 127.0.0.1 called by the official `openai` client and plain HTTP.

The models are tiny GPTs built here in a second and saved as run dirs (random weights, the output layer scaled
up so that the logits are far apart and greedy decoding has few near-ties). Greedy answers are checked against
`sample.py temperature=0` on the same run, and against the model's own solo generation."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from helpers import CHARS, KEY, Server, run_entry, save_run, start_server, stop_server

from nanogpt.tokenizer import GPT2Tokenizer


@pytest.fixture(scope="module")
def char_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    return save_run(tmp / "charrun", {"kind": "char", "chars": CHARS}, len(CHARS), block_size=1024)


@pytest.fixture(scope="module")
def server(char_run) -> Iterator[Server]:
    s = start_server(char_run.parent, f"run={char_run}", "max_batch=4", "max_queue=8", "device.device=cpu")
    try:
        yield s
    finally:
        stop_server(s)


def sample_greedy(run: Path, prompt: str, tokens: int) -> str:
    """`sample.py temperature=0`'s one sample, without the prompt it echoes."""
    out = run_entry("sample.py", f"run={run}", f"start={prompt}", "num_samples=1", f"max_new_tokens={tokens}",
                    "temperature=0", "device.device=cpu", cwd=run.parent).stdout  # fmt: skip
    return out.split("\n---------------\n")[0][len(prompt) :]


def test_greedy_completion_equals_sample_py_alone_and_batched(server, char_run):
    """Greedy output is sample.py's, whether the request ran alone or beside three others (continuous batching:
    they join and leave at different steps)."""
    client = server.client()
    prompts = ["To be", "Hello there", "a", "Why? Because"]
    alone = client.completions.create(model="charrun", prompt=prompts[0], max_tokens=40, temperature=0)
    assert alone.choices[0].finish_reason == "length"
    assert alone.usage.prompt_tokens == len(prompts[0]) and alone.usage.completion_tokens == 40
    assert alone.choices[0].text == sample_greedy(char_run, prompts[0], 40)
    from concurrent.futures import ThreadPoolExecutor

    def ask(i: int) -> str:
        time.sleep(0.02 * i)
        r = client.completions.create(model="charrun", prompt=prompts[i], max_tokens=20 + 7 * i, temperature=0)
        return r.choices[0].text

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, range(4)))
    assert together[0] == alone.choices[0].text[:20]
    assert together[3] == sample_greedy(char_run, prompts[3], 41)
    for i in (1, 2):  # beside others as alone
        solo = client.completions.create(model="charrun", prompt=prompts[i], max_tokens=20 + 7 * i, temperature=0)
        assert together[i] == solo.choices[0].text


def test_streaming_completion_stop_strings_and_n(server):
    client = server.client()
    full = client.completions.create(model="charrun", prompt="Once", max_tokens=30, temperature=0).choices[0].text
    stop = full[10:12]
    cut = full[: full.index(stop)]
    stream = client.completions.create(model="charrun", prompt="Once", max_tokens=30, temperature=0, stop=["QQQ", stop],
                                       stream=True, stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == cut
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0 and not chunks[-1].choices
    # n choices, seeded: each choice is its own draw, the same again for the same seed
    a = client.completions.create(model="charrun", prompt="Once", max_tokens=12, n=3, seed=7, temperature=1.0)
    b = client.completions.create(model="charrun", prompt="Once", max_tokens=12, n=3, seed=7, temperature=1.0)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    assert a.usage.completion_tokens == 36
    top1 = client.completions.create(model="charrun", prompt="Once", max_tokens=12, extra_body={"top_k": 1})
    assert top1.choices[0].text == full[:12]


def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["charrun"]
    r = httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"})
    assert r.json()["status"] == "ok"


def test_chat_on_a_base_model_is_a_400_with_the_reason(server):
    with pytest.raises(openai.BadRequestError) as e:
        server.client().chat.completions.create(model="charrun", messages=[{"role": "user", "content": "hi"}])
    assert "character-level vocabulary has no chat tokens" in str(e.value)


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("chat")
    vocab = GPT2Tokenizer(chat=True).vocab_size
    run = save_run(tmp / "chatrun", {"kind": "gpt2", "chat": True}, vocab, vocab_size=50304)
    s = start_server(tmp, f"run={run}", "model_name=tiny-chat", "device.device=cpu")
    try:
        yield s
    finally:
        stop_server(s)


def test_chat_completions_streaming_and_not(chat_server):
    client = chat_server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    r = client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=15, temperature=0, n=2)
    assert r.object == "chat.completion" and len(r.choices) == 2
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy: both the same
    assert r.choices[0].finish_reason in ("stop", "length")
    from nanogpt.chat.template import ChatTemplate

    assert r.usage.prompt_tokens == len(ChatTemplate.of(GPT2Tokenizer(chat=True)).prompt(messages))
    chunks = list(client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=15, temperature=0,
                                                 stream=True))  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == r.choices[0].finish_reason


def test_plain_http_sse_ends_with_done(server):
    body = {"model": "charrun", "prompt": "Hi", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def post(server: Server, path: str, body: bytes | dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, dict):
        return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=30)
    return httpx.post(f"{server.url}{path}", content=body, headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize(
    "body, status, param, says",
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "not an object"),
        ({"model": "charrun", "prompt": "a", "max_tokens": "ten"}, 400, "max_tokens", "1..1024"),
        ({"model": "charrun", "prompt": "a", "max_tokens": 0}, 400, "max_tokens", "1..1024"),
        ({"model": "charrun", "prompt": "a", "max_tokens": 1025}, 400, "max_tokens", "1..1024"),
        ({"model": "charrun", "prompt": "a", "n": 5}, 400, "n", "1..4"),
        ({"model": "charrun", "prompt": "a", "n": True}, 400, "n", "whole number"),
        ({"model": "charrun", "prompt": "a", "temperature": 3}, 400, "temperature", "[0.0, 2.0]"),
        ({"model": "charrun", "prompt": "a", "top_p": 0}, 400, "top_p", "keeps no token"),
        ({"model": "charrun", "prompt": "a", "top_k": 10**6}, 400, "top_k", "1.."),
        ({"model": "charrun", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
        ({"model": "charrun", "prompt": 7}, 400, "prompt", "string or a list of token ids"),
        ({"model": "charrun", "prompt": "a", "logprobs": 2}, 400, "logprobs", "not supported"),
        ({"model": "charrun", "prompt": "a", "frobnicate": 1}, 400, "frobnicate", "unknown field"),
        ({"model": "charrun", "prompt": "a", "stream": "yes"}, 400, "stream", "true or false"),
        ({"model": "charrun", "prompt": "é"}, 400, None, "not in"),  # a character the vocabulary lacks
        ({"model": "gpt-4", "prompt": "a"}, 404, "model", "does not exist"),
        ({"model": "charrun", "prompt": "a" * 1025}, 400, "prompt", "context of 1024 tokens"),
    ],
)
def test_bad_requests_are_openai_error_objects(server, body, status, param, says):
    r = post(server, "/v1/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error["message"] and error["type"] and "Traceback" not in r.text
    if param:
        assert error["param"] == param


def test_truncate_left_keeps_the_end_of_a_long_prompt(server):
    r = post(server, "/v1/completions", {"model": "charrun", "prompt": "ab" * 600, "max_tokens": 4, "truncate": "left"})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 1020  # the block, less room for max_tokens


def test_api_key_body_limit_and_the_client_errors(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    assert post(server, "/v1/completions", {"prompt": "a"}, key=None).status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 401
    assert httpx.get(f"{server.url}/").status_code == 200  # the page itself holds nothing
    r = post(server, "/v1/completions", b'{"prompt": "' + b"a" * 2_000_000 + b'"}')
    assert r.status_code == 413 and "1000000 bytes" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope", prompt="a")


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    health = lambda: httpx.get(f"{server.url}/health", headers={"Authorization": f"Bearer {KEY}"}).json()
    before = health()["steps"]
    body = {"model": "charrun", "prompt": "Go", "max_tokens": 1000, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:  # fmt: skip
        lines = r.iter_lines()
        next(lines), next(lines)  # two events arrived: the sequence is in the batch
    deadline = time.monotonic() + 10
    while health()["active"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health()["active"] == 0
    assert health()["steps"] - before < 900  # it left early, not after its 1000 tokens


@pytest.mark.slow
def test_sigterm_mid_stream_exits_cleanly(char_run):
    s = start_server(char_run.parent, f"run={char_run}", "device.device=cpu", "shutdown_timeout=1")
    try:
        body = {"model": "charrun", "prompt": "Go", "max_tokens": 1000, "stream": True}
        with httpx.stream("POST", f"{s.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=30) as r:  # fmt: skip
            lines = r.iter_lines()
            next(lines)
            s.proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]  # finished within shutdown_timeout, or cut off at its end
        assert s.proc.wait(timeout=20) == 0
        assert rest[-1] == "data: [DONE]"
    finally:
        stop_server(s)
    assert "Traceback" not in s.log.read_text()


@pytest.mark.slow
def test_serving_beyond_loopback_without_a_key_warns(char_run):
    s = start_server(char_run.parent, f"run={char_run}", "device.device=cpu", "host=0.0.0.0", key=None)
    stop_server(s)
    assert "without an API key" in s.log.read_text()
