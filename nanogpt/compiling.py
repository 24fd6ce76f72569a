"""torch.compile where it pays for itself, and Inductor's caches kept between runs.

A cold compile of the CPU recipe's model costs more than it saves in a 2000-step run; a warm one (the compiled
graphs found in Inductor's FX-graph and AOT-autograd caches) costs seconds and then each step is faster
(docs/BENCHMARKS.md). So `device.compile=null` (auto) compiles on CUDA always, and on a CPU when this model's
graphs are already cached or the run is long enough to repay a cold compile. Inductor's default cache lives in
/tmp, which many systems empty at boot: we keep it in ~/.cache/nanogpt/inductor instead, unless the user chose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform

import torch

from nanogpt.config import ModelConfig, TrainConfig
from nanogpt.device import Precision
from nanogpt.files import atomic_write

log = logging.getLogger("nanogpt")

# A run with at least this many steps left repays a cold compile on a CPU: measured on the CPU recipe's model,
# compiling costs about as much as 1,000-2,500 eager steps and saves ~25% of each one (docs/BENCHMARKS.md).
LONG_RUN_STEPS = 10_000
# Inductor's caches, on unless the user turned them off: compiled kernels and graphs (FX graph cache) and the
# forward/backward split of training graphs (AOT autograd cache). Both write by rename: safe between processes.
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


def graph_key(model_config: dict, batch_shape: tuple[int, ...], dtype: torch.dtype, device_type: str) -> str:
    """What makes the compiled graphs of a run the same as another's: the model, the batch, the precision, the
    device and the software. Inductor's own cache keys are finer; this one only says "compiled before"."""
    facts = [model_config, list(batch_shape), str(dtype), device_type, torch.__version__, platform.machine()]
    if device_type == "cpu":
        facts.append(torch.backends.cpu.get_cpu_capability())
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _marker(key: str) -> str:
    return os.path.join(cache_dir(), "nanogpt-compiled", key)


def is_warm(key: str) -> bool:
    """Whether a run of these graphs compiled to the end before, leaving them in the cache (a cache emptied by hand
    takes our markers with it: they live inside it)."""
    return os.path.exists(_marker(key))


def mark_warm(key: str) -> None:
    path = _marker(key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, b"")


def should_compile(setting: bool | None, device_type: str, steps_left: int, warm: bool) -> bool:
    """device.compile: true or false as given; null (auto) where it pays: CUDA always, a CPU when the graphs are in
    the cache or the run is long, MPS never (its compiler is experimental)."""
    if setting is not None:
        return setting
    if device_type == "cuda":
        return True
    return device_type == "cpu" and (warm or steps_left >= LONG_RUN_STEPS)


def decide(
    setting: bool | None, precision: Precision, model_cfg: ModelConfig, train_cfg: TrainConfig, steps_left: int
) -> tuple[Precision, str | None]:
    """`precision` with `compile` set as `should_compile` says, and the graphs' key for `mark_warm` once they ran
    (None when not compiling). Compiling turns Inductor's persistent caches on."""
    batch_shape = (train_cfg.batch_size, model_cfg.block_size)
    key = graph_key(dataclasses.asdict(model_cfg), batch_shape, precision.dtype, precision.device_type)
    if not should_compile(setting, precision.device_type, steps_left, is_warm(key)):
        return dataclasses.replace(precision, compile=False), None
    log.info(
        "compiling the model (device.compile=%s); Inductor's cache: %s", str(setting).lower(), use_persistent_cache()
    )
    return dataclasses.replace(precision, compile=True), key
