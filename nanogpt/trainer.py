"""A run's `Trainer`: everything the loop works with, built once (data, model, optimizers, metrics) and restored
from the run's latest checkpoint when it has one, and its checkpoint written back.

The loop itself is in train.py; this module is what it starts from.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from nanogpt import checkpoint, distributed, lora, optim, runs
from nanogpt import device as devices
from nanogpt import tokenizer as tok
from nanogpt.config import RunConfig
from nanogpt.data.batches import Batches
from nanogpt.data.token_files import dataset_dir, read_meta
from nanogpt.errors import UserError
from nanogpt.eval.loop import TrainingTasks
from nanogpt.metrics import MetricsLog
from nanogpt.model import GPT
from nanogpt.sweeps import budgets

log = logging.getLogger("nanogpt")


@dataclass
class TrainState:
    """Where the loop is: what a checkpoint saves besides the weights, optimizers and RNG states."""

    iter: int = 0  # optimizer steps taken
    best_val_loss: float = float("inf")
    evaluated_at: int = -1  # the iter of the last evaluation, so a resumed run does not repeat it


@dataclass
class Trainer:
    """Everything one run's loop works with, built once by `build`."""

    cfg: RunConfig
    run_dir: str
    dist: distributed.Dist
    precision: devices.Precision
    raw_model: GPT  # the GPT itself: its parameters, its checkpoints
    model: torch.nn.Module  # what a step calls: the GPT, wrapped for DDP/FSDP and compiled as asked
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    batches: Batches
    info: dict[str, Any]  # the facts every checkpoint records (shape, tokenizer, vocabulary)
    state: TrainState
    metrics: MetricsLog | None  # rank 0 only
    tasks: TrainingTasks | None = None  # downstream tasks scored at evaluations (train.eval_tasks)

    def save(self, as_latest: bool, as_best: bool) -> None:
        """Checkpoint the run (a collective under DDP/FSDP: every rank calls it)."""
        if distributed.is_sharded(self.raw_model):  # gathered whole on rank 0: the same files as without FSDP
            weights, opt_states = distributed.full_state(self.raw_model, self.optimizers, self.dist)
        else:
            weights, opt_states = self.raw_model, [opt.state_dict() for opt in self.optimizers]
            if lora.is_adapted(self.raw_model):  # the adapters only; info.json points at the frozen base
                weights = lora.adapter_weights(self.raw_model)
        trainer_state = {
            "optimizers": opt_states,
            "scaler": self.scaler.state_dict(),
            **dataclasses.asdict(self.state),
            "rng": distributed.gather_rng_states(self.dist, self.precision.device),
        }
        if self.dist.is_main:
            self.info.update(iter=self.state.iter, best_val_loss=self.state.best_val_loss)
            checkpoint.save(
                self.run_dir,
                weights,
                trainer_state,
                self.info,
                as_latest=as_latest,
                as_best=as_best,
                keep_last=self.cfg.train.keep_last,
            )
        distributed.barrier(self.dist)


def build(cfg: RunConfig, run_dir: str, dist: distributed.Dist, precision: devices.Precision) -> Trainer:
    """Everything the loop needs, restored from the run's latest checkpoint when it has one."""
    train_cfg = cfg.train
    if train_cfg.grad_accum % dist.world_size and not train_cfg.eval_only:  # evaluation takes no training steps
        raise UserError(
            f"train.grad_accum={train_cfg.grad_accum} must be a multiple of the number of processes ({dist.world_size})"
        )
    data_path = _prepared_data(cfg, dist, precision.device)
    # The run's shape and length (model.depth, a compute budget), once the data's vocabulary is known.
    cfg, plan = budgets.resolve(cfg, read_meta(data_path)["vocab_size"])
    train_cfg = cfg.train
    cfg = dataclasses.replace(cfg, optim=optim.fit_schedule(cfg.optim, train_cfg.max_iters, train_cfg.eval_only))
    ckpt = checkpoint.find(run_dir, "latest")
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    raw_model, info = _build_model(cfg, ckpt, data_path, dist)
    if dist.is_main:
        tok.copy_to_run(info["tokenizer"], data_path, run_dir)  # sample.py, export.py and evaluation read it there
    if not any(p.is_meta for p in raw_model.parameters()):
        raw_model.to(precision.device)
    block_size, vocab_size = raw_model.config.block_size, raw_model.config.vocab_size
    batches = Batches(
        data_path,
        block_size,
        train_cfg.batch_size,
        train_cfg.grad_accum,
        cfg.seed,
        precision.device,
        vocab_size=vocab_size,
    )
    # DDP or FSDP on several processes, compiled as asked; FSDP shards the weights in place, so the optimizer
    # comes after.
    model = distributed.wrap(raw_model, train_cfg.parallel, dist, precision)
    optimizers = optim.build(raw_model, cfg.optim, precision.device_type)
    scaler = torch.amp.GradScaler(precision.device_type, enabled=precision.needs_grad_scaler())
    torch.manual_seed(cfg.seed + dist.rank)  # dropout differs across ranks
    state = TrainState()
    if ckpt is not None:
        state = _resume(ckpt, raw_model, optimizers, scaler, dist, precision)
    # Logged once resume succeeded: a refused one leaves the run's files (run.log too) as they were.
    if dist.is_main and precision.threads is not None:
        log.info(precision.threads.describe())
        if precision.threads.busy:
            log.warning(precision.threads.busy)
    if dist.is_main and plan is not None:
        log.info("plan: %s", budgets.describe(plan))
        budgets.write_plan(run_dir, plan)
    # Downstream tasks call raw_model: a full replica under DDP, the sharded module under FSDP, never compiled.
    tasks = TrainingTasks(cfg, info, raw_model, precision, dist) if train_cfg.eval_tasks else None
    metrics = _start_metrics(cfg, run_dir, raw_model, precision, resumed=ckpt is not None) if dist.is_main else None
    return Trainer(
        cfg, run_dir, dist, precision, raw_model, model, optimizers, scaler, batches, info, state, metrics, tasks
    )


def _prepared_data(cfg: RunConfig, dist: distributed.Dist, device: torch.device) -> str:
    """The data set's folder, prepared here if it never was and this is the only process."""
    from nanogpt.data import nanogpt_folder
    from nanogpt.data.prepare import prepare

    data_path = dataset_dir(cfg.data, cfg.paths.data_dir)
    # Only a data set never prepared is built here: damaged token files are reported, never silently rebuilt.
    missing = not os.path.exists(os.path.join(data_path, "meta.json")) and not nanogpt_folder.is_folder(data_path)
    if distributed.any_rank(missing, dist, device):
        # Several processes would wait for one to prepare it (hours for OpenWebText) and time out: say what to run.
        if dist.enabled:
            raise UserError(
                f"data set {cfg.data.name!r} is not prepared in {data_path} and this run has {dist.world_size} "
                f"processes: prepare it first with python prepare.py data={cfg.data.name} "
                f"paths.data_dir={cfg.paths.data_dir} (and this run's data.* overrides), then launch again"
            )
        log.info("%s is not prepared yet: preparing it now", data_path)
        prepare(cfg.data, cfg.paths.data_dir)
    return data_path


def _build_model(cfg: RunConfig, ckpt: str | None, data_path: str, dist: distributed.Dist) -> tuple[GPT, dict]:
    """The model to train and its checkpoints' facts. Under FSDP only rank 0 builds it whole; the other ranks
    build its shape on the meta device (no memory) and get their shards of rank 0's weights when it is sharded."""
    if not (dist.enabled and cfg.train.parallel == "fsdp"):
        return runs.build_model(cfg, ckpt, data_path)
    built = runs.build_model(cfg, ckpt, data_path) if dist.is_main else None
    model_cfg, info = distributed.broadcast((built[0].config, built[1]) if built else None, dist)
    if built is not None:
        return built
    with torch.device("meta"):
        return GPT(model_cfg), info


def _resume(
    ckpt: str,
    model: GPT,
    optimizers: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    dist: distributed.Dist,
    precision: devices.Precision,
) -> TrainState:
    """Restore the optimizers, the grad scaler and every rank's RNG state; the loop's state is returned."""
    saved = checkpoint.load_state(ckpt)
    optim.load_states(optimizers, saved["optimizers"], model)
    _load_scaler(scaler, saved["scaler"])
    distributed.set_rng_state(saved["rng"], dist, precision.device)
    log.info("resumed from %s at iter %d", ckpt, saved["iter"])
    return TrainState(saved["iter"], saved["best_val_loss"], saved["evaluated_at"])


def _load_scaler(scaler: torch.amp.GradScaler, state: dict) -> None:
    """The fp16 loss scale, when both runs use one. A run resumed in another dtype: a scaler that was off saved {}
    (the new fp16 one starts from its initial scale), and one that is off now ignores the saved scale."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("the checkpoint was trained without fp16 loss scaling: the grad scaler starts afresh")


def _start_metrics(cfg: RunConfig, run_dir: str, model: GPT, precision: devices.Precision, resumed: bool) -> MetricsLog:
    train_cfg, block_size = cfg.train, model.config.block_size
    metrics = MetricsLog(
        run_dir, cfg.logger, f"{cfg.name}/{os.path.basename(run_dir)}", dataclasses.asdict(cfg), resume=resumed
    )
    log.info(
        "model: %.2fM parameters, %s on %s; %d tokens per step (%d x %d x %d)",
        model.num_params() / 1e6,
        str(precision.dtype).removeprefix("torch."),
        precision.device,
        train_cfg.batch_size * train_cfg.grad_accum * block_size,
        train_cfg.grad_accum,
        train_cfg.batch_size,
        block_size,
    )
    return metrics
