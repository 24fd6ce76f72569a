"""run.py's main: train as the composed config says, or continue the run `resume=<dir>` names, and record the
outcome in the run's status.json and the exit code."""

from __future__ import annotations

import logging
import os
import sys
import time

from omegaconf import DictConfig

from nanogpt.cli.compose import GROUPS, given_keys, load_run_config, to_object, with_overrides
from nanogpt.cli.rundirs import is_scratch_dir
from nanogpt.cli.startup import importing_torch
from nanogpt.config import RunConfig
from nanogpt.errors import FailedDuringTraining, UserError
from nanogpt.from_nanogpt import is_checkpoint as is_nanogpt_checkpoint
from nanogpt.ranks import launch_env
from nanogpt.rundir import link_latest, write_status

log = logging.getLogger("nanogpt")


def run_main(cfg: DictConfig, run_dir: str, overrides: list[str], multirun: bool = False) -> None:
    """Train as `cfg` says. In a sweep a failed job is recorded in its status.json and the sweep goes on;
    otherwise a user error exits 2 with one line, and a signal exits 128 + its number after saving."""
    with importing_torch():
        import torch._dynamo  # noqa: F401  every torch.optim optimizer imports it when built: frozen with torch

        from nanogpt.rundir import RunDirBusy
        from nanogpt.signals import Interrupted
        from nanogpt.train import train
        from nanogpt.trial import Pruned

    started = time.time()
    status: dict = {"status": "running"}
    main_rank = launch_env().rank == 0
    if is_scratch_dir(run_dir):
        import atexit
        import shutil

        atexit.register(shutil.rmtree, run_dir, ignore_errors=True)  # not the run's dir: see cli/rundirs.py
    try:
        run_dir, run_cfg = _run_config(cfg, run_dir, overrides, link=main_rank and not multirun)
        if "data.source" in given_keys(overrides):  # never train on a set prepared from another source
            from nanogpt.data.prepare import check_given_source

            check_given_source(run_cfg.data, run_cfg.paths.data_dir)
        result = train(run_cfg, run_dir)
        run_dir = result.run_dir
        status = {
            "status": "completed",
            "iter": result.iter,
            "best_val_loss": result.best_val_loss,
            "val_loss": result.val_loss,
            "last_train_loss": result.last_train_loss,
        }
    except Pruned as e:  # an Optuna trial stopped early by its study's pruner: a normal end
        status = {"status": "pruned", "iter": e.iter, "val_loss": e.val_loss}
    except Interrupted as e:
        status = {"status": "interrupted", "error": str(e)}
        write_status(run_dir, status, started, main_rank)
        if e.hand_over is None:
            sys.exit(128 + e.signum)
        try:
            e.hand_over()  # submitit requeues the job and exits; it resumes from the checkpoint just saved
        except Exception as why:  # submitit would not requeue it, e.g. after max_num_timeout time limits
            error = f"{e}, not requeued: {why}; continue with python run.py resume={run_dir}"
            status = {"status": "failed", "error": error}
            if not multirun:
                write_status(run_dir, status, started, main_rank)
                raise
            log.error("job failed: %s", status["error"])
        else:
            sys.exit(128 + e.signum)  # not rank 0: rank 0 requeues the job
    except UserError as e:
        status = {"status": "failed", "error": str(e)}
        if isinstance(e, RunDirBusy) or (cfg.resume and not isinstance(e, FailedDuringTraining)):
            main_rank = False  # a refused resume, or a live run's dir: leave the run's record alone
        if not multirun:
            write_status(run_dir, status, started, main_rank and os.path.isdir(run_dir))
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        log.error("job failed: %s", e)
    except Exception as e:
        status = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        if not multirun:
            write_status(run_dir, status, started, main_rank and os.path.isdir(run_dir))
            raise
        log.exception("job failed; the sweep goes on")
    write_status(run_dir, status, started, main_rank)


def _run_config(cfg: DictConfig, run_dir: str, overrides: list[str], link: bool) -> tuple[str, RunConfig]:
    """The run dir and validated config of a new run, or of the run `resume=<dir>` continues."""
    if cfg.resume and is_nanogpt_checkpoint(cfg.resume):
        run_cfg = _continue_nanogpt(cfg, run_dir, overrides)
        if link:
            link_latest(run_dir)
        return run_dir, run_cfg
    if not cfg.resume:
        run_cfg = to_object(cfg, RunConfig)
        if link:  # outputs/<experiment>/latest -> this run, so `sample.py run=outputs/<experiment>/latest` works
            link_latest(run_dir)
        return run_dir, run_cfg
    from nanogpt.checkpoint import find

    run_cfg = load_run_config(cfg.resume, [o for o in overrides if not o.startswith("resume=")])
    if find(cfg.resume) is None:
        # Killed before its first checkpoint: nothing to continue from, but a restart-until-done loop must still
        # make progress in this dir.
        log.warning("resume=%s has no checkpoint yet: starting the run from the beginning, in that dir", cfg.resume)
    return cfg.resume, run_cfg


def _continue_nanogpt(cfg: DictConfig, run_dir: str, overrides: list[str]) -> RunConfig:
    """`resume=<nanoGPT out_dir>`: a new run of ours with the settings its ckpt.pt recorded (the command line's
    overrides on top), starting from its weights, AdamW state, iter_num and best_val_loss."""
    from omegaconf import OmegaConf

    from nanogpt.atomic import atomic_write
    from nanogpt.from_nanogpt.checkpoint import load
    from nanogpt.from_nanogpt.config_file import resume_overrides
    from nanogpt.from_nanogpt.resume import start_run

    ckpt = load(cfg.resume)
    # The command line's values again, over the checkpoint's (its group choices are in `cfg` already).
    mine = [o for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") not in (*GROUPS, "resume")]
    run_cfg = with_overrides(cfg, resume_overrides(ckpt.config, cfg.resume), mine)
    run_cfg.resume = None
    start_run(cfg.resume, run_dir, run_cfg)
    # Its record is the config it now trains with, so that resume=<this dir> continues it as it is.
    saved = os.path.join(run_dir, ".hydra", "config.yaml")
    atomic_write(saved, OmegaConf.to_yaml(OmegaConf.structured(run_cfg)).encode())
    return run_cfg
