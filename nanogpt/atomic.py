"""Files written all at once: a kill at any moment leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os


def fsync(path: str) -> None:
    """Flush a file or a folder (after a rename in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, payload: bytes) -> None:
    """Replace `path` with `payload`: written to a temporary name, fsynced, then renamed over it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_symlink(target: str, link: str) -> None:
    """Point the symlink `link` at `target` (relative to the link's folder), replacing any old link at once."""
    tmp = f"{link}.tmp-{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))
