"""The training loop: set up the process, build or restore the model, then step, evaluate, checkpoint, log.

`train()` reads top to bottom: `_setup` builds everything a run needs (the `Trainer`), `_train_loop` runs the
steps, each one inline, as nanoGPT's loop does. Resume restores the `TrainState` a checkpoint saved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from nanogpt import checkpoint, distributed, lora, optim, runs
from nanogpt import device as devices
from nanogpt import tokenizer as tok
from nanogpt.bits_per_byte import bits_per_byte
from nanogpt.config import RunConfig
from nanogpt.data.batches import Batches
from nanogpt.data.tokens import SPLITS, dataset_dir, read_meta
from nanogpt.errors import FailedDuringTraining, UserError
from nanogpt.eval.loop import TrainingTasks
from nanogpt.metrics import MetricsLog
from nanogpt.model import GPT
from nanogpt.rundir import RunLock
from nanogpt.signals import Interrupted, StopSignals
from nanogpt.sweeps import budgets

log = logging.getLogger("nanogpt")


@dataclass
class Result:
    run_dir: str
    iter: int
    best_val_loss: float
    last_train_loss: float | None
    val_loss: float | None


@dataclass
class TrainState:
    """Where the loop is: what a checkpoint saves besides the weights, optimizers and RNG states."""

    iter: int = 0  # optimizer steps taken
    best_val_loss: float = float("inf")
    evaluated_at: int = -1  # the iter of the last evaluation, so a resumed run does not repeat it


@dataclass
class Trainer:
    """Everything one run's loop works with, built once by `_setup`."""

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


def train(cfg: RunConfig, run_dir: str) -> Result:
    """Train (or evaluate) as `cfg` says, writing into `run_dir`; resumes if it holds a checkpoint."""
    env = distributed.launch_env()
    precision = devices.resolve(cfg.device, env.local_rank if env.enabled else None)
    dist = distributed.setup(precision.device_type)
    run_dir = distributed.broadcast(os.path.abspath(run_dir), dist)
    lock = RunLock(run_dir) if dist.is_main else None
    try:
        trainer = _setup(cfg, run_dir, dist, precision)
        try:
            return _train_loop(trainer)
        except UserError as e:  # the run's record should say it failed
            raise FailedDuringTraining(str(e)) from e
        finally:
            if trainer.metrics is not None:
                trainer.metrics.close()
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(dist)


# ---- setup: data, model, optimizers, resume ----


def _setup(cfg: RunConfig, run_dir: str, dist: distributed.Dist, precision: devices.Precision) -> Trainer:
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
    if dist.is_main and plan is not None:  # once resume succeeded: a refused one leaves the run's files as they were
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
    from nanogpt.data.prepare import prepare

    data_path = dataset_dir(cfg.data, cfg.paths.data_dir)
    # Only a data set never prepared is built here: damaged token files are reported, never silently rebuilt.
    missing = not os.path.exists(os.path.join(data_path, "meta.json"))
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


# ---- the loop ----


def _train_loop(tr: Trainer) -> Result:
    cfg, dist, precision, state = tr.cfg, tr.dist, tr.precision, tr.state
    train_cfg, optim_cfg = cfg.train, cfg.optim
    model, raw_model, batches, optimizers, scaler = tr.model, tr.raw_model, tr.batches, tr.optimizers, tr.scaler
    accum = train_cfg.grad_accum // dist.world_size  # micro-batches per step on this process
    stop = StopSignals()
    pending: list[tuple[int, torch.Tensor]] = []  # (iter, loss) of steps not yet read back from the device
    last_train_loss, val_loss = None, None
    speed = _Throughput(train_cfg.batch_size * train_cfg.grad_accum * raw_model.config.block_size, state.iter)
    try:
        while True:
            lr_factor = optim.lr_factor(state.iter, optim_cfg, train_cfg.max_iters)
            optim.set_lr(optimizers, lr_factor)

            # ---- evaluate and checkpoint ----
            if (
                state.iter % train_cfg.eval_interval == 0 or state.iter == train_cfg.max_iters or train_cfg.eval_only
            ) and (state.iter != state.evaluated_at):
                _read_losses(pending, dist)  # never checkpoint weights a NaN touched
                pending = []
                val_loss = _evaluate_and_save(tr, speed, lr=optim_cfg.lr * lr_factor)
                if train_cfg.eval_only:
                    break
            if state.iter >= train_cfg.max_iters:
                break

            # ---- one optimizer step: accumulate gradients over micro-batches ----
            step_loss = torch.zeros((), device=precision.device)
            for micro in range(accum):
                x, y = batches.train(state.iter, dist.rank * accum + micro)
                # Gradients are synchronised across processes on the last micro-batch only (FSDP decides during
                # the backward, so it is inside).
                with distributed.gradient_sync(model, micro == accum - 1):
                    with precision.autocast():
                        _, loss = model(x, y)
                        loss = loss / accum  # the step's gradient is the mean over its micro-batches
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            if train_cfg.skip_nonfinite and not math.isfinite(
                distributed.all_reduce_mean(step_loss.clone(), dist).item()
            ):
                log.warning("iter %d: the loss is not finite; skipping this step (train.skip_nonfinite)", state.iter)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                step_loss.fill_(0.0)  # skipped steps do not stop the run at the next log
            else:
                if optim_cfg.grad_clip > 0:
                    for opt in optimizers:
                        scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), optim_cfg.grad_clip)
                for opt in optimizers:
                    scaler.step(opt)
                    opt.zero_grad(set_to_none=True)
                scaler.update()
            pending.append((state.iter, step_loss))

            # ---- log: the only place losses are read back from the device ----
            if state.iter % train_cfg.log_interval == 0 or state.iter == train_cfg.max_iters - 1:
                last_train_loss = _read_losses(pending, dist)[-1]
                pending = []
                _log_step(tr, last_train_loss, optim_cfg.lr * lr_factor, speed.tokens_per_s(state.iter + 1))
            state.iter += 1

            # In DDP, agreeing on a stop costs a collective: do it at log steps only.
            action = stop.requested(dist, precision.device, at_log_step=(state.iter - 1) % train_cfg.log_interval == 0)
            if action:
                _read_losses(pending, dist)
                tr.save(as_latest=True, as_best=False)
                if action == "save":
                    log.info("checkpoint saved at iter %d; going on until told to stop", state.iter)
                    continue
                log.info(
                    "stopped at iter %d: checkpoint saved; resume with python run.py resume=%s", state.iter, tr.run_dir
                )
                raise Interrupted(stop.signum, stop.hand_over())
    finally:
        stop.restore()
    return Result(tr.run_dir, state.iter, state.best_val_loss, last_train_loss, val_loss)


def _evaluate_and_save(tr: Trainer, speed: _Throughput, lr: float) -> float:
    """Evaluate; checkpoint if the run improved (or always, as configured). Returns the val loss."""
    state, train_cfg = tr.state, tr.cfg.train
    t_eval = time.perf_counter()
    # On a CPU the loss is evaluated uncompiled: a compiled model would trace a second graph (no grad, eval mode),
    # which costs more at start-up than it saves over a run's evaluations.
    model = tr.raw_model if tr.precision.device_type == "cpu" else tr.model
    losses = estimate_loss(model, tr.batches, train_cfg.eval_iters, tr.precision, tr.dist)
    last = state.iter == train_cfg.max_iters or train_cfg.eval_only
    scores = tr.tasks.run(state.iter) if tr.tasks is not None and tr.tasks.due(state.iter, last) else {}  # all ranks
    state.evaluated_at = state.iter
    improved = losses["val"] < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, losses["val"])
    if tr.metrics is not None:
        bpb = bits_per_byte(losses, tr.batches.meta)  # none for data sets prepared before bytes were counted
        shown = f", val {bpb['val_bpb']:.4f} bits/byte" if "val_bpb" in bpb else ""
        log.info("iter %d: train loss %.4f, val loss %.4f%s", state.iter, losses["train"], losses["val"], shown)
        record = {"iter": state.iter, "train_loss": losses["train"], "val_loss": losses["val"], **bpb, "lr": lr}
        tr.metrics.write({**record, **scores})
    if not train_cfg.eval_only and state.iter > 0 and (improved or train_cfg.always_save_checkpoint):
        tr.save(as_latest=True, as_best=improved)
    speed.pause(time.perf_counter() - t_eval)  # evaluation is not training time
    return losses["val"]


class _Throughput:
    """Tokens per second of training between two log steps, evaluation time left out."""

    def __init__(self, tokens_per_step: int, first_iter: int):
        self.tokens_per_step = tokens_per_step
        self._since, self._iter = time.perf_counter(), first_iter

    def pause(self, seconds: float) -> None:
        self._since += seconds

    def tokens_per_s(self, next_iter: int) -> float:
        now = time.perf_counter()
        rate = self.tokens_per_step * (next_iter - self._iter) / max(now - self._since, 1e-9)
        self._since, self._iter = now, next_iter
        return rate


def _log_step(tr: Trainer, loss: float, lr: float, tokens_per_s: float) -> None:
    """Log a step: `tokens_per_s` is the whole job's rate (every process); MFU is per device, so it takes one
    process's share of it against one device's peak."""
    if tr.metrics is None:
        return
    it = tr.state.iter
    record = {"iter": it, "loss": loss, "lr": lr, "tokens_per_s": round(tokens_per_s, 1)}
    peak = tr.precision.peak_flops()
    if peak is not None:
        per_device = tokens_per_s / tr.dist.world_size
        record["mfu"] = round(tr.raw_model.flops_per_token() * per_device / peak, 4)
    tokens_per_step = tr.cfg.train.batch_size * tr.cfg.train.grad_accum * tr.raw_model.config.block_size
    log.info(
        "iter %d: loss %.4f, %.1f ms/iter, %s tokens/s%s",
        it,
        loss,
        1000 * tokens_per_step / tokens_per_s,
        f"{tokens_per_s:,.0f}",
        f", mfu {100 * record['mfu']:.1f}%" if "mfu" in record else "",
    )
    tr.metrics.write(record)


def _read_losses(pending: list[tuple[int, torch.Tensor]], dist: distributed.Dist) -> list[float]:
    """The mean loss over all processes of each pending step; stops the run if one is NaN or inf."""
    if not pending:
        return []
    values = distributed.all_reduce_mean(torch.stack([loss for _, loss in pending]), dist).tolist()
    for (it, _), value in zip(pending, values, strict=True):
        if not math.isfinite(value):
            raise UserError(
                f"the training loss is {value} at iter {it}: the run diverged; lower optim.lr or raise "
                "optim.warmup_iters, and resume from the last checkpoint (it predates the divergence)"
            )
    return values


# Evaluation stacks its batches up to this many tokens per forward: a small model's forward is mostly per-op
# overhead (the CPU recipe's 20 batches per split take 0.73x the time in forwards of 5), a large one's batches are
# already past it and stay one per forward.
EVAL_TOKENS_PER_FORWARD = 4096


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module, batches: Batches, eval_iters: int, precision: devices.Precision, dist: distributed.Dist
) -> dict[str, float]:
    """Mean loss over the same `eval_iters` batches of each split, shared out across processes. Every process runs
    the same number of forwards (FSDP's forward is a collective): where `eval_iters` does not divide by the number
    of processes, the last ones run a batch again with its targets masked out (-1), and leave it out of the mean."""
    model.eval()
    out = {}
    per_forward = max(1, EVAL_TOKENS_PER_FORWARD // (batches.batch_size * batches.block_size))
    for split in SPLITS:
        total = torch.zeros((), device=precision.device)
        mine = list(range(dist.rank, math.ceil(eval_iters / dist.world_size) * dist.world_size, dist.world_size))
        for group in (mine[i : i + per_forward] for i in range(0, len(mine), per_forward)):
            pairs = [batches.eval(split, min(k, eval_iters - 1)) for k in group]
            counted = [k < eval_iters for k in group]
            x = torch.cat([x for x, _ in pairs])
            y = torch.cat([y if keep else torch.full_like(y, -1) for (_, y), keep in zip(pairs, counted, strict=True)])
            with precision.autocast():
                _, loss = model(x, y)
            if any(counted):  # batches of equal size: the mean over their tokens is the mean of their means
                total += loss.float() * sum(counted)
        out[split] = (distributed.all_reduce_mean(total, dist) * dist.world_size / eval_iters).item()
    model.train()
    return out
