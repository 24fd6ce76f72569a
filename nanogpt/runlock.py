"""One live run per run dir: an advisory lock that the OS drops when its process dies."""

from __future__ import annotations

import fcntl
import os

from nanogpt.errors import UserError


class RunDirBusy(UserError):
    """Another live process holds the run dir: touch nothing in it."""


class RunLock:
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
