"""`train.eval_tasks`: downstream tasks scored during training, at evaluations, beside the val loss.

The tasks' data is loaded when the run starts, so a missing file fails it before it trains. Scoring calls the
model itself, not its torch.compile'd wrapper: the examples' lengths vary, and each new shape would recompile.
Under DDP that module is a full replica (no collectives); under FSDP it is the sharded module, whose forwards are
collectives, which is why every process runs the same number of them (nanogpt/eval/hellaswag.py pads). A stop
asked during the tasks (Ctrl-C) is honoured before the next forward, not at the end of the tasks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nanogpt import tokenizer as tok
from nanogpt.config import RunConfig
from nanogpt.device import Precision
from nanogpt.distributed import Dist
from nanogpt.eval import task_module
from nanogpt.eval.scoring import Row, Scorer

log = logging.getLogger("nanogpt")


@dataclass
class _StoppableScorer(Scorer):
    """A Scorer that calls `check_stop` before each forward: every process scores the same number of batches
    (the tasks pad theirs), so under DDP/FSDP the check, a collective there, comes at the same points on all."""

    check_stop: Callable[[], None] | None = None

    def score(self, rows: Sequence[Row]) -> tuple[list[float], list[bool]]:
        if self.check_stop is not None:
            self.check_stop()
        return super().score(rows)


class TrainingTasks:
    def __init__(self, cfg: RunConfig, info: dict[str, Any], model: torch.nn.Module, precision: Precision, dist: Dist):
        t = cfg.train
        self.interval = t.eval_tasks_interval or t.eval_interval
        if self.interval % t.eval_interval:
            every = math.lcm(self.interval, t.eval_interval)
            log.warning(
                "train.eval_tasks_interval=%d is not a multiple of train.eval_interval=%d: the tasks run at "
                "evaluations only, so every %d steps",
                self.interval,
                t.eval_interval,
                every,
            )
        self.modules = {name: task_module(name) for name in t.eval_tasks}
        self.data = {
            name: m.load(cfg.eval, cfg.paths.data_dir, t.eval_tasks_limit, dist) for name, m in self.modules.items()
        }
        self.scorer = _StoppableScorer(
            model,
            tok.from_meta({"tokenizer": info["tokenizer"]}),
            block_size=model.config.block_size,
            vocab_size=info["data_vocab_size"],
            device=precision.device,
            autocast=precision.autocast,
            batch_size=cfg.eval.batch_size,
            dist=dist,
        )
        self.main = dist.is_main

    def due(self, it: int, last: bool) -> bool:
        return it % self.interval == 0 or last

    def run(self, it: int, check_stop: Callable[[], None] | None = None) -> dict[str, float]:
        """Every task's metrics as <task>_<metric>, and the time they took (`eval_tasks_s`); every process calls it.
        `check_stop` is called before each forward; what it raises ends the tasks, nothing of them logged."""
        started = time.perf_counter()
        record: dict[str, float] = {}
        self.scorer.check_stop = check_stop
        for name, module in self.modules.items():
            result = module.score(self.scorer, self.data[name])
            record.update({f"{name}_{k}": v for k, v in result.metrics.items()})
            if self.main:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
                counts = "".join(f", {v} {k.replace('_', ' ')}" for k, v in result.details.items() if v)
                log.info("iter %d: %s %s (%d examples%s)", it, name, shown, result.examples, counts)
        record["eval_tasks_s"] = round(time.perf_counter() - started, 3)
        if self.main:
            log.info("iter %d: downstream tasks took %.2f s", it, record["eval_tasks_s"])
        return record
