"""serve.py's main: load a run (or a GPT-2) as sample.py does, and serve it over the OpenAI API until SIGTERM."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator

from omegaconf import DictConfig

from nanogpt.cli.compose import to_object
from nanogpt.cli.startup import importing_torch
from nanogpt.config import SampleConfig, ServeConfig
from nanogpt.errors import UserError, exit_on_user_error

log = logging.getLogger("nanogpt")
# After the grace period the engine ends what is left; this long again lets those last answers reach their clients.
FAREWELL_S = 1.0


@exit_on_user_error
def serve_main(cfg: DictConfig) -> None:
    serve(to_object(cfg, ServeConfig))


def serve(cfg: ServeConfig) -> None:
    try:
        import uvicorn

        from nanogpt.serve.api import create_app
    except ImportError as e:
        raise UserError(f"serving needs {e.name}: pip install fastapi uvicorn") from None
    with importing_torch():
        from nanogpt.sampling import generation_precision, generation_weights, load_for_sampling
        from nanogpt.serve.engine import Engine
        from nanogpt.serve.requests import Limits
    api_key = cfg.api_key or os.environ.get("NANOGPT_API_KEY") or None
    if api_key is None and not _loopback(cfg.host):
        log.warning(
            "WARNING: serving on %s without an API key: anyone who can reach this address can use the model; "
            "set api_key=... or NANOGPT_API_KEY",
            cfg.host,
        )
    precision = generation_precision(cfg.device)
    source = SampleConfig(run=cfg.run, init_from=cfg.init_from, checkpoint=cfg.checkpoint)
    model, tokenizer, vocab = load_for_sampling(source)
    model.eval().to(precision.device)
    autocast = generation_weights(model, precision)
    block = model.config.block_size
    name = cfg.model_name or (os.path.basename(os.path.realpath(cfg.run)) if cfg.run else str(cfg.init_from))
    limits = Limits(name, block, vocab, min(cfg.max_tokens or block, block), cfg.max_batch)
    engine = Engine(model, tokenizer, vocab, cfg.max_batch, cfg.max_queue)
    engine.start(autocast)
    app = create_app(engine, tokenizer, limits, api_key, cfg.max_body_bytes)
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, timeout_graceful_shutdown=cfg.shutdown_timeout + FAREWELL_S,
        log_level="info",
    )  # fmt: skip
    log.info("serving %s on http://%s:%d (chat page at /, API at /v1)", name, cfg.host, cfg.port)
    server = _Server(config, cfg.shutdown_timeout, engine.cut_off)
    try:
        server.run()
    finally:
        server.stop_grace_timer()
        engine.stop()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server:
    """uvicorn's server, except that SIGTERM and SIGINT end it with exit status 0 (uvicorn raises the signal
    again once it has shut down, which would report a clean, asked-for stop as death by signal), and that the
    first one also calls `cut_off` `grace` seconds later: the requests still in flight then get a last answer
    (an error object and [DONE]) rather than a connection closed in the middle of a stream."""

    def __init__(self, config, grace: float, cut_off: Callable[[], None]):
        import uvicorn

        self.server = uvicorn.Server(config)
        self.server.capture_signals = self._capture_signals
        self.grace_timer = threading.Timer(grace, cut_off)
        self.grace_timer.daemon = True

    def run(self) -> None:
        self.server.run()

    def stop_grace_timer(self) -> None:
        self.grace_timer.cancel()

    def _exit(self, sig: int, frame) -> None:
        if self.grace_timer.ident is None:  # the first signal
            self.grace_timer.start()
        self.server.handle_exit(sig, frame)

    @contextlib.contextmanager
    def _capture_signals(self) -> Iterator[None]:
        handlers = {s: signal.signal(s, self._exit) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)
