"""Signals during training: SIGTERM and SIGINT save a checkpoint and stop; under submitit the preemption signal
saves, then hands over to submitit's handler, which requeues the job."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import torch

from nanogpt import distributed

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


class StopRequested(Exception):
    """Raised between evaluation batches when a stop was asked: the evaluation is dropped, the run stops."""


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to stop after the current step, save, and exit. During an
    evaluation the stop comes after the current evaluation batch (`check`): an evaluation can take many steps' time.

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
            log.warning("%s received: stopping after this step (or evaluation batch) and saving a checkpoint", name)
        if asked >= self._asked:
            self._asked, self.signum = asked, signum

    def requested(self, dist: distributed.Dist, device: torch.device, at_log_step: bool) -> str | None:
        """What to do after this step: None (train on), "save" (a checkpoint, then train on) or "stop"."""
        if dist.enabled:
            if not at_log_step:
                return None
            self._agree(device)
        asked, self._asked = self._asked, (0 if self._asked == self._SAVE else self._asked)
        return {0: None, self._SAVE: "save"}.get(asked, "stop")

    def check(self, dist: distributed.Dist, device: torch.device) -> None:
        """Raise StopRequested if a stop (or a preemption) was asked on any rank; a request to save only waits for
        the next step. Under DDP/FSDP it is a collective: every rank calls it at the same points."""
        if dist.enabled:
            self._agree(device)
        if self._asked >= self._STOP:
            raise StopRequested

    def _agree(self, device: torch.device) -> None:
        """Every rank takes the most urgent request any rank got, so that all act at the same point."""
        flag = torch.tensor([float(self._asked * 100 + self.signum)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self._asked, self.signum = divmod(int(flag.item()), 100)

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
