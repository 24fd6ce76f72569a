"""The training loop: set up the process, build or restore the model, then step, evaluate, checkpoint, log."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nanogpt import checkpoint, distributed, optim
from nanogpt import device as devices
from nanogpt.config import ModelConfig, RunConfig
from nanogpt.data.batches import Batches
from nanogpt.data.prepare import SPLITS, dataset_dir, prepare
from nanogpt.errors import UserError
from nanogpt.logging import MetricsLog
from nanogpt.model import GPT
from nanogpt.runlock import RunLock

log = logging.getLogger("nanogpt")


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; the run can be resumed.

    `hand_over`, when set, passes the signal on to the handler that was there before ours (submitit's, which
    requeues the job and exits): call it once the run's status is recorded.
    """

    def __init__(self, signum: int, hand_over: Callable[[], None] | None = None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.hand_over = hand_over


@dataclass
class Result:
    run_dir: str
    iter: int
    best_val_loss: float
    last_train_loss: float | None
    val_loss: float | None


def train(cfg: RunConfig, run_dir: str) -> Result:
    """Train (or evaluate) as `cfg` says, writing into `run_dir`; resumes if it holds a checkpoint."""
    # ---- process: ranks, device, precision, one run dir for all ranks ----
    env = distributed.launch_env()
    prec = devices.resolve(cfg.device, env.local_rank if env.enabled else None)
    d = distributed.setup(prec.device_type)
    run_dir = distributed.broadcast(os.path.abspath(run_dir), d)
    lock = RunLock(run_dir) if d.is_main else None
    try:
        return _train(cfg, run_dir, d, prec)
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(d)


def _train(cfg: RunConfig, run_dir: str, d: distributed.Dist, prec: devices.Precision) -> Result:
    t, o = cfg.train, cfg.optim
    if t.grad_accum % d.world_size:
        raise UserError(
            f"train.grad_accum={t.grad_accum} must be a multiple of the number of processes ({d.world_size})"
        )
    accum = t.grad_accum // d.world_size  # micro-batches per step on this process

    # ---- data: prepared by rank 0 if missing ----
    data_path = dataset_dir(cfg.data, cfg.paths.data_dir)
    # Only a data set never prepared is built here: damaged token files are reported, never silently rebuilt.
    if d.is_main and not os.path.exists(os.path.join(data_path, "meta.json")):
        log.info("%s is not prepared yet: preparing it now", data_path)
        prepare(cfg.data, cfg.paths.data_dir)
    distributed.barrier(d)

    # ---- model: resumed, pretrained or fresh ----
    ckpt = checkpoint.find(run_dir, "latest")
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model, info = build_model(cfg, ckpt, data_path)
    model.to(prec.device)
    batches = Batches(
        data_path, model.config.block_size, t.batch_size, t.grad_accum, cfg.seed, prec.device,
        vocab_size=model.config.vocab_size,
    )  # fmt: skip

    # DDP or FSDP on several processes; FSDP shards the weights in place, so the optimizer comes after.
    wrapped = distributed.wrap(model, t.parallel, d, prec.device)
    optimizers = optim.build(model, o, prec.device_type)
    scaler = torch.amp.GradScaler(prec.device_type, enabled=prec.needs_grad_scaler())
    it, best_val, evaluated_at = 0, float("inf"), -1
    torch.manual_seed(cfg.seed + d.rank)  # dropout differs across ranks
    if ckpt is not None:
        state = checkpoint.load_state(ckpt)
        optim.load_states(optimizers, state["optimizers"], model)
        scaler.load_state_dict(state["scaler"])
        it, best_val, evaluated_at = state["iter"], state["best_val_loss"], state["evaluated_at"]
        _set_rng_state(state["rng"], d, prec)
        log.info("resumed from %s at iter %d", ckpt, it)

    forward = torch.compile(wrapped) if cfg.device.compile else wrapped

    metrics = None
    if d.is_main:
        metrics = MetricsLog(run_dir, cfg.logger, f"{cfg.name}/{os.path.basename(run_dir)}",
                             dataclasses.asdict(cfg), resume=ckpt is not None)  # fmt: skip
        log.info(
            "model: %.2fM parameters, %s on %s; %d tokens per step (%d x %d x %d)",
            model.num_params() / 1e6, str(prec.dtype).removeprefix("torch."), prec.device,
            t.batch_size * t.grad_accum * model.config.block_size, t.grad_accum, t.batch_size,
            model.config.block_size,
        )  # fmt: skip

    def save(as_latest: bool, as_best: bool) -> None:
        if distributed.is_sharded(model):  # gathered whole on rank 0: the same checkpoint as without FSDP
            weights, opt_states = distributed.full_state(model, optimizers, d)
        else:
            weights, opt_states = model, [opt.state_dict() for opt in optimizers]
        state = {
            "optimizers": opt_states,
            "scaler": scaler.state_dict(),
            "iter": it,
            "best_val_loss": best_val,
            "evaluated_at": evaluated_at,
            "rng": _gather_rng_state(d, prec),
        }
        if d.is_main:
            info.update(iter=it, best_val_loss=best_val)
            checkpoint.save(run_dir, weights, state, info, as_latest=as_latest, as_best=as_best,
                            keep_last=t.keep_last)  # fmt: skip
        distributed.barrier(d)

    stop = _StopSignals()
    tokens_per_step = t.batch_size * t.grad_accum * model.config.block_size
    pending: list[torch.Tensor] = []  # step losses not yet read back from the device
    last_train_loss, val_loss = None, None
    t_log, it_log = time.perf_counter(), it
    try:
        while True:
            factor = optim.lr_factor(it, o, t.max_iters)
            optim.set_lr(optimizers, factor)
            lr = o.lr * factor

            # ---- evaluate and checkpoint ----
            if (it % t.eval_interval == 0 or it == t.max_iters or t.eval_only) and it != evaluated_at:
                t_eval = time.perf_counter()
                _read_losses(pending, it - len(pending), d)  # never checkpoint weights a NaN touched
                losses = evaluate(forward, batches, t.eval_iters, prec, d)
                evaluated_at, val_loss = it, losses["val"]
                improved = losses["val"] < best_val
                best_val = min(best_val, losses["val"])
                if metrics is not None:
                    log.info("iter %d: train loss %.4f, val loss %.4f", it, losses["train"], losses["val"])
                    metrics.write({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"], "lr": lr})
                if t.eval_only:
                    break
                if it > 0 and (improved or t.always_save_checkpoint):
                    save(as_latest=True, as_best=improved)
                t_log += time.perf_counter() - t_eval  # evaluation is not training time
            if it >= t.max_iters:
                break

            # ---- one optimizer step: accumulate gradients over micro-batches ----
            step_loss = torch.zeros((), device=prec.device)
            for micro in range(accum):
                x, y = batches.train(it, d.rank * accum + micro)
                # Gradients are synchronised across processes on the last micro-batch only.
                with distributed.gradient_sync(wrapped, micro == accum - 1), prec.autocast():
                    _, loss = forward(x, y)
                    loss = loss / accum  # the step's gradient is the mean over its micro-batches
                scaler.scale(loss).backward()
                step_loss += loss.detach()
            if t.skip_nonfinite and not math.isfinite(distributed.all_reduce_mean(step_loss.clone(), d).item()):
                log.warning("iter %d: the loss is not finite; skipping this step (train.skip_nonfinite)", it)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                step_loss.fill_(0.0)  # skipped steps do not stop the run at the next log
            else:
                if o.grad_clip > 0:
                    for opt in optimizers:
                        scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
                for opt in optimizers:
                    scaler.step(opt)
                    opt.zero_grad(set_to_none=True)
                scaler.update()
            pending.append(step_loss)

            # ---- log: the only place losses are read back from the device ----
            if it % t.log_interval == 0 or it == t.max_iters - 1:
                last_train_loss = _read_losses(pending, it + 1 - len(pending), d)[-1]
                pending = []
                now = time.perf_counter()
                tokens_per_s = tokens_per_step * (it + 1 - it_log) / max(now - t_log, 1e-9)
                t_log, it_log = now, it + 1
                if metrics is not None:
                    record = {"iter": it, "loss": last_train_loss, "lr": lr, "tokens_per_s": round(tokens_per_s, 1)}
                    peak = prec.peak_flops()
                    if peak is not None:
                        record["mfu"] = round(model.flops_per_token() * tokens_per_s / peak, 4)
                    log.info(
                        "iter %d: loss %.4f, %.1f ms/iter, %s tokens/s%s", it, last_train_loss,
                        1000 * tokens_per_step / tokens_per_s, f"{tokens_per_s:,.0f}",
                        f", mfu {100 * record['mfu']:.1f}%" if "mfu" in record else "",
                    )  # fmt: skip
                    metrics.write(record)
            it += 1

            # In DDP, agreeing on a stop costs a collective: do it at log steps only.
            action = stop.requested(d, prec.device, at_log_step=(it - 1) % t.log_interval == 0)
            if action:
                _read_losses(pending, it - len(pending), d)
                save(as_latest=True, as_best=False)
                if action == "save":
                    log.info("checkpoint saved at iter %d; going on until told to stop", it)
                    continue
                log.info("stopped at iter %d: checkpoint saved; resume with python run.py resume=%s", it, run_dir)
                raise Interrupted(stop.signum, stop.hand_over())
    except UserError as e:
        e.during_training = True  # type: ignore[attr-defined]  # the run's record should say it failed
        raise
    finally:
        stop.restore()
        if metrics is not None:
            metrics.close()
    return Result(run_dir, it, best_val, last_train_loss, val_loss)


def _read_losses(pending: list[torch.Tensor], first_iter: int, d: distributed.Dist) -> list[float]:
    """The mean loss over all processes of each pending step; stops the run if one is NaN or inf."""
    if not pending:
        return []
    values = distributed.all_reduce_mean(torch.stack(pending), d).tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise UserError(
                f"the training loss is {v} at iter {first_iter + i}: the run diverged; lower optim.lr or raise "
                "optim.warmup_iters, and resume from the last checkpoint (it predates the divergence)"
            )
    return values


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, batches: Batches, eval_iters: int, prec: devices.Precision, d: distributed.Dist
) -> dict[str, float]:
    """Mean loss over the same `eval_iters` batches of each split, shared out across processes."""
    model.eval()
    out = {}
    for split in SPLITS:
        total = torch.zeros((), device=prec.device)
        for k in range(d.rank, eval_iters, d.world_size):
            x, y = batches.eval(split, k)
            with prec.autocast():
                _, loss = model(x, y)
            total += loss.float()
        out[split] = (distributed.all_reduce_mean(total, d) * d.world_size / eval_iters).item()
    model.train()
    return out


def build_model(cfg: RunConfig, ckpt: str | None, data_path: str) -> tuple[GPT, dict[str, Any]]:
    """The model to train and the facts its checkpoints record (shape, tokenizer, vocabulary)."""
    from nanogpt.data.prepare import read_meta

    meta = read_meta(data_path)
    if ckpt is not None:
        info = checkpoint.load_info(ckpt)
        saved = ModelConfig(**info["model"])
        _check_same_model(cfg, saved, info, meta, ckpt)
        model = GPT(dataclasses.replace(saved, dropout=cfg.model.dropout))
        checkpoint.load_weights(model, ckpt)
        return model, info
    if cfg.init_from == "scratch":
        vocab = cfg.model.vocab_size or _pad(meta["vocab_size"], cfg.model.pad_vocab_multiple)
        model = GPT(dataclasses.replace(cfg.model, vocab_size=vocab))
    else:
        from nanogpt.pretrained import from_huggingface  # transformers costs seconds to import

        if meta["tokenizer"].get("kind") != "gpt2":
            raise UserError(
                f"init_from={cfg.init_from} needs data in GPT-2's BPE, but {cfg.data.name!r} is tokenized with "
                f"{meta['tokenizer'].get('kind')!r}: use data=shakespeare, or data.tokenizer=gpt2 for your text"
            )
        log.info(
            "init_from=%s: the shape comes from the checkpoint; model.block_size=%d and model.dropout=%s still "
            "apply (model=gpt2 keeps GPT-2's 1024 and 0.0)", cfg.init_from, cfg.model.block_size, cfg.model.dropout,
        )  # fmt: skip
        model = from_huggingface(cfg.init_from, dropout=cfg.model.dropout, block_size=cfg.model.block_size)
    info = {
        "model": dataclasses.asdict(model.config),
        "tokenizer": meta["tokenizer"],
        "data_vocab_size": meta["vocab_size"],
        "init_from": cfg.init_from,
    }
    return model, info


def _check_same_model(cfg: RunConfig, saved: ModelConfig, info: dict, meta: dict, ckpt: str) -> None:
    """A checkpoint only resumes under the model shape and tokenizer it was trained with."""
    if info["tokenizer"] != meta["tokenizer"]:
        raise UserError(
            f"the data set {cfg.data.name!r} is tokenized differently from checkpoint {ckpt}: "
            "resume with the data the run was trained on"
        )
    if cfg.init_from != "scratch":
        return  # the shape came from the pretrained model, not from cfg.model
    asked = dataclasses.asdict(cfg.model)
    for key, value in dataclasses.asdict(saved).items():
        if key in ("dropout", "pad_vocab_multiple") or (key == "vocab_size" and asked[key] is None):
            continue
        if asked[key] != value:
            raise UserError(
                f"model.{key}={asked[key]} but checkpoint {ckpt} was trained with model.{key}={value}: "
                "resume with the model config the run was trained with"
            )


def _pad(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _gather_rng_state(d: distributed.Dist, prec: devices.Precision) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG state (dropout), so a resumed run draws the same random numbers."""
    mine = {"cpu": torch.get_rng_state()}
    if prec.device_type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(prec.device)
    if not d.enabled:
        return [mine]
    states: list[Any] = [None] * d.world_size
    torch.distributed.all_gather_object(states, mine)
    return states


def _set_rng_state(states: list[dict[str, torch.Tensor]], d: distributed.Dist, prec: devices.Precision) -> None:
    if len(states) != d.world_size:
        log.warning("resuming on %d processes, saved with %d: dropout draws will differ", d.world_size, len(states))
        return
    torch.set_rng_state(states[d.rank]["cpu"])
    if prec.device_type == "cuda" and "cuda" in states[d.rank]:
        torch.cuda.set_rng_state(states[d.rank]["cuda"], prec.device)


class _StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to stop after the current step, save, and exit.

    In a job sent by submitit (hydra/launcher=slurm or local), the preemption signal (USR2, as submitit asks
    Slurm for before the time limit) also saves after the current step, then hands the signal to submitit's
    handler, which requeues the job: it starts again in the same job dir and resumes from that checkpoint.
    There SIGTERM only saves and training goes on, as submitit expects: Slurm sends SIGTERM just before USR2
    when it preempts, and SIGKILL a few seconds after it when it cancels.
    """

    # Priorities of what was asked, agreed across ranks by an all-reduce MAX: requeue beats stop beats save.
    _SAVE, _STOP, _PREEMPT = 1, 2, 3

    def __init__(self):
        self.signum = 0
        self._asked = 0
        self._under_submitit = "SUBMITIT_EXECUTOR" in os.environ
        # The signal submitit uses for preemption and time limits (it reads the same variable).
        self._preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        self._previous: dict[int, Any] = {}
        for s in (signal.SIGTERM, signal.SIGINT, self._preempt):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == self._preempt:
            asked = self._PREEMPT
            log.warning("%s received (preemption or time limit): saving a checkpoint after this step", name)
        elif signum == signal.SIGTERM and self._under_submitit:
            asked = self._SAVE
            log.warning("SIGTERM received: saving a checkpoint after this step, then going on (submitit job)")
        else:
            if self._asked >= self._STOP:  # a second signal: the user insists
                raise KeyboardInterrupt
            asked = self._STOP
            log.warning("%s received: stopping after this step and saving a checkpoint", name)
        if asked >= self._asked:
            self._asked, self.signum = asked, signum

    def requested(self, d: distributed.Dist, device: torch.device, at_log_step: bool) -> str | None:
        """What to do after this step: None (train on), "save" (a checkpoint, then train on) or "stop"."""
        if d.enabled:
            if not at_log_step:
                return None
            # Every rank must act at the same step, on the most urgent request any rank got.
            flag = torch.tensor([float(self._asked * 100 + self.signum)], device=device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            self._asked, self.signum = divmod(int(flag.item()), 100)
        asked, self._asked = self._asked, (0 if self._asked == self._SAVE else self._asked)
        return {0: None, self._SAVE: "save"}.get(asked, "stop")

    def hand_over(self) -> Callable[[], None] | None:
        """After a preemption signal: a call of the handler installed before ours, if it is Python code."""
        previous = self._previous.get(self.signum)
        if self.signum != self._preempt or not callable(previous):
            return None
        signum = self.signum
        return lambda: previous(signum, None)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
