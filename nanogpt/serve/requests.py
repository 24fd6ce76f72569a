"""OpenAI-shaped request bodies -> what the engine runs, or an `ApiError` naming the bad field (status 400).

The fields are those of OpenAI's completions and chat completions; `top_k` and `truncate` are ours (the `openai`
client sends them through `extra_body`). A field we cannot honour is refused, not ignored: a client that asks
for log-probabilities or penalties must learn that it did not get them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nanogpt.chat.template import ChatTemplate, check_conversation
from nanogpt.errors import UserError
from nanogpt.serve.engine import Sampling
from nanogpt.tokenizer import Tokenizer

MAX_STOPS = 4  # as OpenAI's API
# Accepted and without effect on the output: metadata.
INERT = {"user", "metadata", "store"}
# Refused unless left at the value that means "off".
UNSUPPORTED = {
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "echo": (False,),
    "best_of": (None, 1),
    "suffix": (None,),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream", "stream_options"}
COMPLETION_FIELDS = COMMON | {"prompt", "truncate"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "truncate"}


class ApiError(Exception):
    """An OpenAI error object: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "invalid_request_error", 503: "server_error"}
        return {
            "error": {
                "message": self.message,
                "type": kind.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Limits:
    """What the served model and the server's settings allow."""

    model_name: str
    block_size: int
    vocab_size: int  # the real vocabulary: top_k beyond it means nothing
    max_tokens: int  # the largest max_tokens a request may ask
    max_batch: int  # n choices need n rows at once


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    sampling: Sampling
    n: int
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e}): send a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body is a JSON {type(body).__name__}, not an object: send {{'model': ..., ...}}")
    return body


def completion_job(body: dict, limits: Limits, tokenizer: Tokenizer) -> Job:
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        try:
            ids = tokenizer.encode(prompt)
        except UserError as e:  # a character the vocabulary lacks
            raise ApiError(400, str(e), "prompt") from None
    elif isinstance(prompt, list) and prompt and all(_is_int(t) and 0 <= t < limits.vocab_size for t in prompt):
        ids = list(prompt)
    else:
        raise ApiError(400, f"prompt must be a string or a list of token ids below {limits.vocab_size}", "prompt")
    if not ids:  # an empty prompt: GPT-2 starts a fresh document after end-of-text, as sample.py does
        if tokenizer.eot_token is None:
            raise ApiError(400, "prompt is empty: give some text to continue", "prompt")
        ids = [tokenizer.eot_token]
    stop_ids = () if tokenizer.eot_token is None else (tokenizer.eot_token,)
    return _job(body, limits, ids, stop_ids, default_max_tokens=16)  # OpenAI's default for completions


def chat_job(body: dict, limits: Limits, tokenizer: Tokenizer) -> Job:
    _check_fields(body, CHAT_FIELDS)
    try:
        template = ChatTemplate.of(tokenizer)
        messages = check_conversation(body.get("messages"), "messages")
    except UserError as e:
        raise ApiError(400, str(e), "messages") from None
    if "max_completion_tokens" in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return _job(body, limits, template.prompt(messages), template.stop_ids, default_max_tokens=limits.max_tokens)


def _job(body: dict, limits: Limits, ids: list[int], stop_ids: tuple[int, ...], default_max_tokens: int) -> Job:
    model = body.get("model", limits.model_name)
    if model != limits.model_name:
        raise ApiError(404, f"the model {model!r} does not exist: this server has {limits.model_name!r}", "model",
                       "model_not_found")  # fmt: skip
    max_tokens = _int(body, "max_tokens", 1, limits.max_tokens, min(default_max_tokens, limits.max_tokens))
    n = _int(body, "n", 1, limits.max_batch, 1)
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, None)
    if top_p == 0.0:
        raise ApiError(400, "top_p=0 keeps no token: give top_p in (0, 1]", "top_p")
    top_k = _int(body, "top_k", 1, limits.vocab_size, None)
    seed = _int(body, "seed", -(2**62), 2**62, None)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, not {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be {'include_usage': true|false}", "stream_options")
    ids = _fit(ids, body.get("truncate"), limits.block_size, max_tokens)
    sampling = Sampling(max_tokens, temperature, top_k, top_p, _stops(body.get("stop")), stop_ids, seed)
    return Job(ids, sampling, n, stream, bool(options.get("include_usage")))


def _fit(ids: list[int], truncate: Any, block_size: int, max_tokens: int) -> list[int]:
    """The prompt if it fits the model's context, else cropped from the left when asked (leaving room for
    max_tokens, or half the block)."""
    if truncate not in (None, "left"):
        raise ApiError(400, f"truncate={truncate!r}: use 'left' (or leave it out)", "truncate")
    if len(ids) <= block_size:
        return ids
    if truncate is None:
        raise ApiError(
            400,
            f"the prompt is {len(ids)} tokens, longer than this model's context of {block_size} tokens: shorten it, "
            "or send truncate='left' to keep its end",
            "prompt",
            "context_length_exceeded",
        )
    return ids[-max(block_size - max_tokens, block_size // 2, 1) :]


def _check_fields(body: dict, known: set[str]) -> None:
    for name, value in body.items():
        if name in UNSUPPORTED:
            if not any(value == off and type(value) is type(off) for off in UNSUPPORTED[name]):
                raise ApiError(400, f"{name}={json.dumps(value)[:60]} is not supported by this server", name)
        elif name not in known and name not in INERT:
            raise ApiError(400, f"unknown field {name!r}", name)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _int(body: dict, name: str, lo: int, hi: int, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or not lo <= value <= hi:
        raise ApiError(400, f"{name}={json.dumps(value)[:60]}: give a whole number in {lo}..{hi}", name)
    return value


def _number(body: dict, name: str, lo: float, hi: float, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if not (_is_int(value) or isinstance(value, float)) or not lo <= value <= hi:
        raise ApiError(400, f"{name}={json.dumps(value)[:60]}: give a number in [{lo}, {hi}]", name)
    return float(value)


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return tuple(stops)
