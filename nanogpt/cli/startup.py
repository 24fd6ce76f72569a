"""An entry point's first import of torch, made without the garbage collector's full collections."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def importing_torch() -> Iterator[None]:
    """Around an entry point's first import of torch: Python's garbage collector paused during it, then what it
    made frozen out of the collector's reach (gc.freeze). torch and its compiler stack are about a million objects
    that live as long as the process, and each full collection walks them all: several ran during start-up and
    the last ones at exit (docs/BENCHMARKS.md, start-up). Objects made later are collected as usual. Once per
    process: with torch already imported (a second job of a sweep, a library user) this does nothing, so no
    garbage of theirs is frozen."""
    if "torch" in sys.modules:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
