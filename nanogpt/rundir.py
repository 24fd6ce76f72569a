"""A run dir's own files: the lock that keeps one live process in it, status.json, the `latest` link beside it,
and the check that a path given as `run=` or `resume=` is a run dir at all."""

from __future__ import annotations

import fcntl
import json
import os
import time

from nanogpt.atomic import atomic_symlink, atomic_write_text
from nanogpt.errors import UserError

STATUS = "status.json"  # completed | failed | interrupted | running, with the run's final numbers


class RunDirBusy(UserError):
    """Another live process holds the run dir: touch nothing in it."""


class RunLock:
    """One live run per run dir: an advisory lock that the OS drops when its process dies."""

    def __init__(self, run_dir: str):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, ".lock")
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 64).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise RunDirBusy(
                f"{run_dir} is in use by another live run (pid {holder}): wait for it to finish or stop it"
            ) from None
        # A lock left by a dead process was released by the OS with it, so taking it over is automatic.
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def write_status(run_dir: str, status: dict, started: float, write: bool = True) -> None:
    """status.json: the run's outcome and its wall time since `started` (a time.time())."""
    if write:
        status = {**status, "wall_s": round(time.time() - started, 2)}
        atomic_write_text(os.path.join(run_dir, STATUS), json.dumps(status, indent=1) + "\n")


def link_latest(run_dir: str) -> None:
    """outputs/<experiment>/latest -> this run, so `sample.py run=outputs/<experiment>/latest` finds it."""
    parent, name = os.path.split(os.path.abspath(run_dir))
    atomic_symlink(name, os.path.join(parent, "latest"))


def is_run_dir(path: str) -> bool:
    """Whether `path` is a dir run.py wrote (what `init_from=<run dir>` finetunes from)."""
    return os.path.isfile(os.path.join(path, ".hydra", "config.yaml"))


def check_run_dir(run_dir: str) -> str:
    """The saved config of the run dir `run_dir` (its `.hydra/config.yaml`); one line if it is not a run dir."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir!r} does not exist: give a run dir written by run.py (outputs/<experiment>/...)")
    path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir!r} is not a run dir (no .hydra/config.yaml): pass the dir a run.py run wrote")
    return path
