"""The training loop: set up the process, build or restore the model, then step, evaluate, checkpoint, log.

`train()` reads top to bottom: `trainer.build` makes everything a run needs (the `Trainer`), `_train_loop` runs
the steps, each one inline, as nanoGPT's loop does. Resume restores the `TrainState` a checkpoint saved.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import torch

from nanogpt import device as devices
from nanogpt import distributed, optim, trainer, trial
from nanogpt.bits_per_byte import bits_per_byte
from nanogpt.config import RunConfig
from nanogpt.errors import FailedDuringTraining, UserError
from nanogpt.progress import ProgressBar, Throughput
from nanogpt.rundir import RunLock
from nanogpt.signals import Interrupted, StopRequested, StopSignals
from nanogpt.trainer import Trainer
from nanogpt.val_loss import estimate_loss

log = logging.getLogger("nanogpt")


@dataclass
class Result:
    run_dir: str
    iter: int
    best_val_loss: float
    last_train_loss: float | None
    val_loss: float | None


def train(cfg: RunConfig, run_dir: str) -> Result:
    """Train (or evaluate) as `cfg` says, writing into `run_dir`; resumes if it holds a checkpoint."""
    env = distributed.launch_env()
    precision = devices.resolve(cfg.device, env.local_rank if env.enabled else None)
    dist = distributed.setup(precision.device_type)
    run_dir = distributed.broadcast(os.path.abspath(run_dir), dist)
    lock = RunLock(run_dir) if dist.is_main else None
    try:
        tr = trainer.build(cfg, run_dir, dist, precision)
        try:
            return _train_loop(tr)
        except UserError as e:  # the run's record should say it failed
            raise FailedDuringTraining(str(e)) from e
        finally:
            if tr.metrics is not None:
                tr.metrics.close()
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(dist)


# ---- the loop ----


def _train_loop(tr: Trainer) -> Result:
    cfg, dist, precision, state = tr.cfg, tr.dist, tr.precision, tr.state
    train_cfg, optim_cfg = cfg.train, cfg.optim
    model, raw_model, batches, optimizers, scaler = tr.model, tr.raw_model, tr.batches, tr.optimizers, tr.scaler
    accum = train_cfg.grad_accum // dist.world_size  # micro-batches per step on this process
    _say_if_complete(tr)
    stop = StopSignals()
    check_stop = lambda: stop.check(dist, precision.device)  # between evaluation batches
    pending: list[tuple[int, torch.Tensor, float]] = []  # (iter, loss, lr) of steps not yet read back from the device
    last_train_loss, val_loss = None, None
    speed = Throughput(train_cfg.batch_size * train_cfg.grad_accum * raw_model.config.block_size, state.iter)
    bar = ProgressBar(train_cfg.max_iters, state.iter, shown=dist.is_main and not train_cfg.eval_only)
    try:
        while True:
            lr_factor = optim.lr_factor(state.iter, optim_cfg, train_cfg.max_iters)
            optim.set_lr(optimizers, lr_factor)
            lr = optim_cfg.lr * lr_factor

            # ---- evaluate and checkpoint ----
            due = state.iter % train_cfg.eval_interval == 0 or state.iter == train_cfg.max_iters
            if train_cfg.eval_only or (due and state.iter != state.evaluated_at):
                last_train_loss = _write_steps(tr, pending, speed) or last_train_loss  # never save past a NaN
                pending = []
                try:
                    val_loss = _evaluate_and_save(tr, speed, lr, check_stop)
                except StopRequested:  # nothing of the evaluation is kept: a resumed run evaluates here again
                    _stop(tr, stop)
                trial.report(tr.run_dir, state.iter, val_loss, dist)  # an Optuna trial's pruner may stop it here
                if train_cfg.eval_only:
                    break
            if state.iter >= train_cfg.max_iters:
                break

            # ---- one optimizer step: accumulate gradients over micro-batches ----
            step_loss = torch.zeros((), device=precision.device)
            for micro in range(accum):
                index = dist.rank * accum + micro
                x, y = batches.train(state.iter, index)
                # Gradients are synchronised across processes on the last micro-batch only (FSDP decides during
                # the backward, so it is inside).
                with distributed.gradient_sync(model, micro == accum - 1):
                    with precision.autocast():
                        _, loss = model(x, y)
                        # The step's gradient is the mean over its micro-batches; over conversations' answers, each
                        # micro-batch weighted by its share of the step's answer tokens (Batches.weight).
                        loss = loss * batches.weight(state.iter, index) / accum
                    scaler.scale(loss).backward()
                step_loss += loss.detach()
            _update(tr, step_loss)  # clip and step (or skip a non-finite step)
            pending.append((state.iter, step_loss, lr))
            bar.advance()

            # ---- log: the only place losses are read back from the device ----
            if state.iter % train_cfg.log_interval == 0 or state.iter == train_cfg.max_iters - 1:
                last_train_loss = _write_steps(tr, pending, speed, bar) or last_train_loss
                pending = []
            state.iter += 1

            # In DDP, agreeing on a stop costs a collective: do it at log steps only.
            action = stop.requested(dist, precision.device, at_log_step=(state.iter - 1) % train_cfg.log_interval == 0)
            if action:
                last_train_loss = _write_steps(tr, pending, speed) or last_train_loss
                pending = []
                if action != "save":
                    _stop(tr, stop)
                tr.save(as_latest=True, as_best=False)
                log.info("checkpoint saved at iter %d; going on until told to stop", state.iter)
    finally:
        bar.close()
        stop.restore()
    return Result(tr.run_dir, state.iter, state.best_val_loss, last_train_loss, val_loss)


def _update(tr: Trainer, step_loss: torch.Tensor) -> None:
    """The optimizer step on the accumulated gradients, clipped; a non-finite step is skipped when asked."""
    optimizers, scaler, optim_cfg = tr.optimizers, tr.scaler, tr.cfg.optim
    if tr.cfg.train.skip_nonfinite and not math.isfinite(
        distributed.all_reduce_mean(step_loss.clone(), tr.dist).item()
    ):
        log.warning("iter %d: the loss is not finite; skipping this step (train.skip_nonfinite)", tr.state.iter)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        step_loss.fill_(0.0)  # skipped steps do not stop the run at the next log
        return
    if optim_cfg.grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(tr.raw_model.parameters(), optim_cfg.grad_clip)
    for opt in optimizers:
        scaler.step(opt)
        opt.zero_grad(set_to_none=True)
    scaler.update()


def _say_if_complete(tr: Trainer) -> None:
    """A resumed run that has nothing left to do says so, and how to train it longer."""
    state, train_cfg = tr.state, tr.cfg.train
    if tr.dist.is_main and not train_cfg.eval_only and state.iter >= train_cfg.max_iters == state.evaluated_at:
        log.info(
            "the run is already complete at iter %d (train.max_iters=%d): to train it longer, "
            "python run.py resume=%s train.max_iters=<more than %d>",
            state.iter,
            train_cfg.max_iters,
            tr.run_dir,
            state.iter,
        )


def _stop(tr: Trainer, stop: StopSignals) -> NoReturn:
    """Save the run where it is and stop, to be resumed. Before the first step there is nothing to save (resume
    starts such a run over in its dir), and an evaluation-only run writes no checkpoint."""
    it = tr.state.iter
    if it > 0 and not tr.cfg.train.eval_only:
        tr.save(as_latest=True, as_best=False)
        log.info("stopped at iter %d: checkpoint saved; resume with python run.py resume=%s", it, tr.run_dir)
    else:
        log.info("stopped at iter %d: nothing to save; python run.py resume=%s starts it again", it, tr.run_dir)
    raise Interrupted(stop.signum, stop.hand_over())


def _evaluate_and_save(tr: Trainer, speed: Throughput, lr: float, check_stop: Callable[[], None]) -> float:
    """Evaluate; checkpoint if the run improved (or always, as configured). Returns the val loss. `check_stop`
    raises between evaluation batches when a stop is asked, before anything of the evaluation is recorded."""
    state, train_cfg = tr.state, tr.cfg.train
    t_eval = time.perf_counter()
    # On a CPU the loss is evaluated uncompiled: a compiled model would trace a second graph (no grad, eval mode),
    # which costs more at start-up than it saves over a run's evaluations.
    model = tr.raw_model if tr.precision.device_type == "cpu" else tr.model
    losses = estimate_loss(model, tr.batches, train_cfg.eval_iters, tr.precision, tr.dist, check_stop)
    last = state.iter == train_cfg.max_iters or train_cfg.eval_only
    due = tr.tasks is not None and tr.tasks.due(state.iter, last)
    scores = tr.tasks.run(state.iter, check_stop) if tr.tasks is not None and due else {}  # all ranks
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


def _write_steps(
    tr: Trainer, pending: list[tuple[int, torch.Tensor, float]], speed: Throughput, bar: ProgressBar | None = None
) -> float | None:
    """Read the pending steps' losses back (stopping the run at a NaN) and write a metrics record for each; at a
    log step (`bar` given) also the log line and the bar's numbers. Returns the last loss (None: nothing pending).
    `tokens_per_s` is the whole job's rate (every process) since the last write; MFU is per device, so it takes
    one process's share of it against one device's peak."""
    if not pending:
        return None
    values = _read_losses(pending, tr.dist)
    tokens_per_s = speed.tokens_per_s(pending[-1][0] + 1)
    if tr.metrics is None:
        return values[-1]
    speed_fields: dict[str, float] = {"tokens_per_s": round(tokens_per_s, 1)}
    peak = tr.precision.peak_flops()
    if peak is not None:
        per_device = tokens_per_s / tr.dist.world_size
        speed_fields["mfu"] = round(tr.raw_model.flops_per_token() * per_device / peak, 4)
    for (it, _, lr), loss in zip(pending, values, strict=True):
        tr.metrics.write({"iter": it, "loss": loss, "lr": lr, **speed_fields})
    if bar is not None:
        ms_per_iter = 1000 * speed.tokens_per_step / tokens_per_s
        log.info(
            "iter %d: loss %.4f, %.1f ms/iter, %s tokens/s%s",
            pending[-1][0],
            values[-1],
            ms_per_iter,
            f"{tokens_per_s:,.0f}",
            f", mfu {100 * speed_fields['mfu']:.1f}%" if "mfu" in speed_fields else "",
        )
        bar.show(values[-1], ms_per_iter, tokens_per_s)
    return values[-1]


def _read_losses(pending: list[tuple[int, torch.Tensor, float]], dist: distributed.Dist) -> list[float]:
    """The mean loss over all processes of each pending step; stops the run if one is NaN or inf."""
    values = distributed.all_reduce_mean(torch.stack([loss for _, loss, _ in pending]), dist).tolist()
    for (it, _, _), value in zip(pending, values, strict=True):
        if not math.isfinite(value):
            raise UserError(
                f"the training loss is {value} at iter {it}: the run diverged; lower optim.lr or raise "
                "optim.warmup_iters, and resume from the last checkpoint (it predates the divergence)"
            )
    return values
