"""Where metrics go: the console (through `logging`), metrics.jsonl always, wandb when asked. Rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from nanogpt.config import LoggerConfig

log = logging.getLogger("nanogpt")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of <run dir>/metrics.jsonl in order ([] if there is none), skipping a last line a kill cut
    short. A resumed run appends from its checkpoint, so an iter can appear twice: the later record is current."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """Appends one JSON object per line to <run dir>/metrics.jsonl, and mirrors it to wandb if enabled."""

    def __init__(self, run_dir: str, cfg: LoggerConfig, run_name: str, config: dict[str, Any], resume: bool):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a")
        self._wandb = _start_wandb(cfg, run_dir, run_name, config, resume) if cfg.name == "wandb" else None

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "iter"}, step=record["iter"])

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _start_wandb(cfg: LoggerConfig, run_dir: str, run_name: str, config: dict[str, Any], resume: bool):
    import wandb

    mode = cfg.mode or os.environ.get("WANDB_MODE")
    if mode is None:
        # With no API key, wandb.init() would sit at a login prompt forever: log offline instead.
        have_key = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
        mode = "online" if have_key else "offline"
        if not have_key:
            log.warning(
                "wandb: no API key found (WANDB_API_KEY or `wandb login`); logging offline to %s/wandb; "
                "upload later with `wandb sync`",
                run_dir,
            )
    try:
        return wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            name=cfg.run_name or run_name,
            config=config,
            dir=run_dir,
            mode=mode,
            id=_wandb_id(run_dir),
            resume="allow" if resume else None,
            settings=wandb.Settings(init_timeout=60, console="off"),
        )
    except Exception as e:  # a metrics sink failing must not cost a training run
        log.warning("wandb could not start (%s: %s); going on with metrics.jsonl only", type(e).__name__, e)
        return None


def _wandb_id(run_dir: str) -> str:
    """A stable wandb run id per run dir, so a resumed run continues the same wandb run."""
    import hashlib

    return hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:16]


def _netrc_has_wandb() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False
