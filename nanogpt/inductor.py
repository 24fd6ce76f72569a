"""Inductor's caches kept between runs, so that a compiled run whose graphs were compiled before starts in seconds.

Inductor caches compiled kernels and graphs (the FX graph cache) and the forward/backward split of training graphs
(the AOT autograd cache) in /tmp by default, which many systems empty at boot. We keep them in
~/.cache/nanogpt/inductor instead, unless the user chose (TORCHINDUCTOR_CACHE_DIR, or either cache switched off).
Both caches write by rename: safe to share between processes. What a cold and a warm compile cost is in
docs/BENCHMARKS.md (Compile on a CPU, Start-up).
"""

from __future__ import annotations

import functools
import logging
import os
import threading

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


@functools.cache  # once per process
def probe_cpu_isa_in_background() -> threading.Thread:
    """Start Inductor's probe of the CPU's vector instructions on a thread, where it overlaps Dynamo's tracing.

    Before it loads or builds its first CPU kernel, Inductor compiles and loads a test library for every vector ISA
    the CPU reports, each load in a child Python (docs/BENCHMARKS.md, Compile on a CPU: its share of a warm
    start), paid by every process, as the answer is cached in memory only. The thread waits on those children
    without the GIL; if the main thread needs the answer first it runs the probe itself, as it would have anyway."""
    # Imported here, not on the thread: concurrent first imports of Inductor's modules could deadlock.
    from torch._inductor import codecache, cpp_builder, cpu_vec_isa  # noqa: F401

    thread = threading.Thread(target=cpu_vec_isa.pick_vec_isa, name="inductor-isa-probe", daemon=True)
    thread.start()
    return thread


def compile_module(module: torch.nn.Module, device: torch.device, in_place: bool = False) -> torch.nn.Module:
    """`module`, which runs on `device`, compiled with the persistent cache; `in_place`: `module.compile()` (its
    parameter names stay). On a CPU, Inductor's probe of its vector ISA starts now, in the background."""
    log.info("compiling the model; Inductor's cache: %s", use_persistent_cache())
    if device.type == "cpu":
        probe_cpu_isa_in_background()
    if in_place:
        module.compile()
        return module
    return torch.compile(module)
