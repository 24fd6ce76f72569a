"""The FastAPI app: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, /health, and the chat page.

Each request is checked (nanogpt/serve/requests.py), queued for the engine, and answered as one JSON object or
as server-sent events ending in `data: [DONE]`. The engine's thread hands events to the request's asyncio queue;
a client that goes away cancels its request, and the engine drops it before its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from nanogpt.chat.template import ChatTemplate
from nanogpt.errors import UserError
from nanogpt.serve.engine import Engine, Event, QueueFull, ShuttingDown
from nanogpt.serve.engine import Request as EngineRequest
from nanogpt.serve.requests import ApiError, Job, Limits, chat_job, completion_job, parse_json
from nanogpt.tokenizer import Tokenizer

DISCONNECT_POLL_S = 0.25  # how often a non-streaming request checks that its client is still there
ENDED = {  # how a request the engine ended without finishing it is answered: status, message, code
    "error": (500, "the decoding engine failed on this request (see the server's log)", "engine_error"),
    "shutdown": (
        503,
        "the server shut down before this reply was finished: ask again once it is back",
        "server_shutdown",
    ),  # fmt: skip
}


def _ended(reason: str) -> ApiError:
    status, message, code = ENDED[reason]
    return ApiError(status, message, code=code)


def create_app(engine: Engine, tokenizer: Tokenizer, limits: Limits, api_key: str | None, max_body: int) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.stop()  # after uvicorn closed the connections: nothing is left to answer

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    try:
        ChatTemplate.of(tokenizer)
        can_chat = True
    except UserError:
        can_chat = False

    async def body_of(request: Request) -> dict:
        _authorize(request, api_key)
        return parse_json(await _read_bounded(request, max_body))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(ApiError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        # The page holds no data; what it fetches goes through the key like any other client.
        return resources.files("nanogpt.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health(request: Request) -> dict:
        _authorize(request, api_key)
        active, queued = engine.load()
        return {"status": "ok", "model": limits.model_name, "active": active, "queued": queued, "steps": engine.steps}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _authorize(request, api_key)
        # `chat` is ours: whether chat requests can be answered (the page picks its mode by it)
        model = {
            "id": limits.model_name,
            "object": "model",
            "created": created,
            "owned_by": "nanogpt",
            "chat": can_chat,
        }
        return {"object": "list", "data": [model]}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        job = completion_job(await body_of(request), limits, tokenizer)
        return await _answer(request, engine, job, limits.model_name, _Completion())

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        job = chat_job(await body_of(request), limits, tokenizer)
        return await _answer(request, engine, job, limits.model_name, _Chat())

    return app


def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>", code="invalid_api_key")


async def _read_bounded(request: Request, limit: int) -> bytes:
    too_big = ApiError(413, f"the body is larger than the server's limit of {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


class _Completion:
    """The shapes of /v1/completions."""

    object, chunk_object, prefix = "text_completion", "text_completion", "cmpl"

    def choice(self, index: int, text: str, finish: str | None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    def delta(self, index: int, text: str, finish: str | None, first: bool) -> dict:
        return self.choice(index, text, finish)


class _Chat:
    """The shapes of /v1/chat/completions."""

    object, chunk_object, prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def choice(self, index: int, text: str, finish: str | None) -> dict:
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}

    def delta(self, index: int, text: str, finish: str | None, first: bool) -> dict:
        delta = {"role": "assistant", "content": text} if first else {"content": text} if text else {}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def _usage(job: Job, completion_tokens: int) -> dict:
    prompt = len(job.prompt)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


async def _answer(request: Request, engine: Engine, job: Job, model: str, shape: _Completion | _Chat):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    emit: Callable[[Event], None] = lambda e: loop.call_soon_threadsafe(events.put_nowait, e)
    work = EngineRequest(job.prompt, job.sampling, job.n, emit)
    try:
        engine.submit(work)
    except QueueFull:
        raise ApiError(503, "the server is busy (its queue is full): try again shortly", code="queue_full") from None
    except ShuttingDown:
        raise _ended("shutdown") from None
    head = {"id": f"{shape.prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if job.stream:
        return StreamingResponse(_stream(events, work, job, head, shape), media_type="text/event-stream")
    texts, finish, tokens = [""] * job.n, [None] * job.n, [0] * job.n
    try:
        while None in finish:
            try:
                e = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)  # nobody reads it: the finally frees the rows
                continue
            texts[e.choice] += e.text
            tokens[e.choice] = e.tokens
            finish[e.choice] = e.finish_reason
    finally:
        work.cancel()  # a no-op once every choice finished
    for reason in finish:
        if reason in ENDED:
            raise _ended(reason)
    choices = [shape.choice(i, texts[i], finish[i]) for i in range(job.n)]
    body = {**head, "object": shape.object, "choices": choices, "usage": _usage(job, sum(tokens))}
    return JSONResponse(body)


async def _stream(events: asyncio.Queue[Event], work: EngineRequest, job: Job, head: dict, shape: _Completion | _Chat):
    """Server-sent events: a chunk per event (the first of each chat choice names the role), then the usage if
    asked, then [DONE]; a request the engine ended unfinished gets an error object, then [DONE]. Cancelled when the
    client goes away: the request leaves the batch at the next step."""

    def chunk(choices: list[dict], **more) -> str:
        return f"data: {json.dumps({**head, 'object': shape.chunk_object, 'choices': choices, **more})}\n\n"

    tokens, open_choices, started = [0] * job.n, job.n, [False] * job.n
    ended = None
    try:
        while open_choices:
            e = await events.get()
            if e.finish_reason in ENDED:
                ended = e.finish_reason
                break
            tokens[e.choice] = e.tokens
            first = not started[e.choice]
            started[e.choice] = True
            if first and isinstance(shape, _Chat) and (e.text or e.finish_reason):
                yield chunk([shape.delta(e.choice, "", None, first=True)])
                first = False
            yield chunk([shape.delta(e.choice, e.text, e.finish_reason, first)])
            open_choices -= e.finish_reason is not None
        if ended:
            yield f"data: {json.dumps(_ended(ended).body())}\n\n"
        elif job.include_usage:
            yield chunk([], usage=_usage(job, sum(tokens)))
        yield "data: [DONE]\n\n"
    finally:
        work.cancel()
