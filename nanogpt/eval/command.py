"""`eval.py`: score a run's checkpoint (or an OpenAI GPT-2) on our tasks and lm-evaluation-harness tasks, print a
table, and save the results as <run>/eval/<checkpoint>.json.

Everything that can be refused is checked before the model is scored, and the results file is written last and
atomically: a refused or failed evaluation leaves the run dir as it was.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shlex
from typing import Any

from nanogpt import checkpoint, distributed, runs
from nanogpt import device as devices
from nanogpt.atomic import atomic_write
from nanogpt.config import EvalConfig, SampleConfig
from nanogpt.eval import task_module
from nanogpt.eval.scoring import Scorer

log = logging.getLogger("nanogpt")


def run_eval(cfg: EvalConfig, overrides: list[str]) -> dict[str, Any]:
    """Run the evaluation `cfg` asks for on every process; the first writes and prints. Returns the results."""
    env = distributed.launch_env()
    precision = devices.resolve(cfg.device, env.local_rank if env.enabled else None)
    dist = distributed.setup(precision.device_type)
    try:
        return _run_eval(cfg, overrides, dist, precision)
    finally:
        distributed.teardown(dist)


def _run_eval(
    cfg: EvalConfig, overrides: list[str], dist: distributed.Dist, precision: devices.Precision
) -> dict[str, Any]:
    manager = None
    if cfg.harness:
        from nanogpt.eval import harness

        manager = harness.check_tasks(cfg.harness)  # before anything is loaded: lm-eval installed, names known
    source = find_model(cfg)
    data = {name: task_module(name).load(cfg.eval, cfg.paths.data_dir, cfg.limit, dist) for name in cfg.tasks}
    scorer = load_scorer(cfg, source, precision, dist)
    if manager is not None:
        harness.check_generation(manager, cfg.harness, scorer.block_size, cfg.eval.max_gen_tokens)
    if cfg.chat:
        from nanogpt.chat.template import ChatTemplate

        ChatTemplate.of(scorer.tokenizer)  # a vocabulary without chat markers: one line, before anything is scored
    out = cfg.out or _default_out(cfg, source)
    report: dict[str, Any] = {"model": source, "command": shlex.join(["python", "eval.py", *overrides])}
    report["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    report["tasks"] = {}
    for name, examples in data.items():
        r = task_module(name).score(scorer, examples)
        report["tasks"][name] = {"metrics": r.metrics, "version": r.version, "examples": r.examples, **r.details}
    if manager is not None:
        report["harness"] = harness.score(scorer, cfg, manager)
    if dist.is_main:
        print(table(report), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write(out, (json.dumps(report, indent=1) + "\n").encode())
        log.info("results written to %s", out)
    return report


def find_model(cfg: EvalConfig) -> dict[str, Any]:
    """What will be evaluated: the run's checkpoint (best, else latest) and its iter, or the pretrained name."""
    if cfg.init_from is not None:
        return {"init_from": cfg.init_from}
    ckpt = runs.find_checkpoint(cfg.run, cfg.checkpoint)  # refuses a missing run or one without checkpoints
    which = cfg.checkpoint if checkpoint.find(cfg.run, cfg.checkpoint) == ckpt else "latest"
    info = checkpoint.load_info(ckpt)
    return {"run": os.path.abspath(cfg.run), "checkpoint": which, "path": ckpt, "iter": info.get("iter")}


def load_scorer(
    cfg: EvalConfig, source: dict[str, Any], precision: devices.Precision, dist: distributed.Dist
) -> Scorer:
    """The model to evaluate on its device, with its tokenizer, in eval mode."""
    from nanogpt.sampling import load_for_sampling

    which = source.get("checkpoint", cfg.checkpoint)
    model, tokenizer, vocab = load_for_sampling(SampleConfig(run=cfg.run, init_from=cfg.init_from, checkpoint=which))
    model.eval().to(precision.device)
    return Scorer(
        model,
        tokenizer,
        block_size=model.config.block_size,
        vocab_size=vocab,
        device=precision.device,
        autocast=precision.autocast,
        batch_size=cfg.eval.batch_size,
        dist=dist,
    )


def _default_out(cfg: EvalConfig, source: dict[str, Any]) -> str:
    if cfg.run is not None:
        return os.path.join(cfg.run, "eval", f"{source['checkpoint']}.json")
    return os.path.join("outputs", "eval", f"{os.path.basename(os.path.normpath(cfg.init_from))}.json")


def table(report: dict[str, Any]) -> str:
    """The results as a plain text table: one line per task and metric."""
    lines = [("task", "metric", "value", "stderr", "examples")]
    for section, suffix in (("tasks", ""), ("harness", " (harness)")):
        for name, r in report.get(section, {}).items():
            for i, (metric, value) in enumerate(r["metrics"].items()):
                err = r.get("stderr", {}).get(metric)
                first = i == 0
                lines.append(
                    (
                        name + suffix if first else "",
                        metric,
                        f"{value:.4f}",
                        f"±{err:.4f}" if err is not None else "",
                        str(r["examples"]) if first and r["examples"] is not None else "",
                    )
                )
    widths = [max(len(row[k]) for row in lines) for k in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)
