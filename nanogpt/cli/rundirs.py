"""Where Hydra puts a run: the resolvers in conf/train.yaml's `hydra.run.dir` and `hydra.output_subdir`.

Hydra creates its run dir (and a log in it) before our code runs. Where that dir must not be touched, it gets a
throw-away dir under SCRATCH_PREFIX instead, removed at exit: on other ranks (each process resolves `${now:}` for
itself and could land a second apart from rank 0; they learn rank 0's dir once the process group is up), and for
a `resume=` that names no run, which is then refused without leaving a dir behind.
"""

from __future__ import annotations

import os
import tempfile

from omegaconf import OmegaConf

from nanogpt.from_nanogpt import is_checkpoint as is_nanogpt_checkpoint
from nanogpt.ranks import launch_env

SCRATCH_PREFIX = "nanogpt-scratch-"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("nanogpt.rank_dir"):
        OmegaConf.register_new_resolver("nanogpt.rank_dir", rank_dir)
        OmegaConf.register_new_resolver("nanogpt.subdir", hydra_subdir)


def rank_dir(run_dir: str, resume: str | None) -> str:
    """The run dir Hydra should create for this process: the dated dir, or the resumed run's, on rank 0."""
    rank = launch_env().rank
    if resume and is_nanogpt_checkpoint(resume) and rank == 0:
        return run_dir  # a nanoGPT run continues in a new run dir of ours
    if rank > 0 or (resume and not os.path.isfile(os.path.join(resume, ".hydra", "config.yaml"))):
        return os.path.join(tempfile.gettempdir(), f"{SCRATCH_PREFIX}rank{rank}-{os.getpid()}")
    return resume if resume else run_dir


def is_scratch_dir(run_dir: str) -> bool:
    return os.path.basename(run_dir).startswith(SCRATCH_PREFIX)


def hydra_subdir(resume: str | None) -> str | None:
    """Hydra saves the composed config in `.hydra/` except on other ranks and when resuming a run,
    whose `.hydra/config.yaml` is the record of how it started and must not be overwritten."""
    return None if (resume and not is_nanogpt_checkpoint(resume)) or launch_env().rank > 0 else ".hydra"
