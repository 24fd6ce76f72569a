"""Inductor's caches kept between runs, so that a compiled run whose graphs were compiled before starts in seconds.

Inductor caches compiled kernels and graphs (the FX graph cache) and the forward/backward split of training graphs
(the AOT autograd cache) in /tmp by default, which many systems empty at boot. We keep them in
~/.cache/nanogpt/inductor instead, unless the user chose (TORCHINDUCTOR_CACHE_DIR, or either cache switched off).
Both caches write by rename: safe to share between processes. A cold compile of the CPU recipe costs ~25 s, a warm
one ~4 s (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("nanogpt")

CACHE_SWITCHES = {"TORCHINDUCTOR_FX_GRAPH_CACHE": "1", "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}


def cache_dir() -> str:
    """Where Inductor caches: $TORCHINDUCTOR_CACHE_DIR if set, else ~/.cache/nanogpt/inductor (XDG_CACHE_HOME)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nanogpt", "inductor")


def use_persistent_cache() -> str:
    """Point Inductor at `cache_dir()` with its caches on, keeping any of these variables the user set. Must run
    before the first compile (Inductor reads them then). Returns the cache dir."""
    path = cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    for name, value in CACHE_SWITCHES.items():
        os.environ.setdefault(name, value)
    return path


def compile_module(module: torch.nn.Module, in_place: bool = False) -> torch.nn.Module:
    """`module` compiled with the persistent cache; `in_place`: `module.compile()` (its parameter names stay)."""
    log.info("compiling the model; Inductor's cache: %s", use_persistent_cache())
    if in_place:
        module.compile()
        return module
    return torch.compile(module)
