"""What the entry points do once Hydra has composed their config: validate it, run, report."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import time

from omegaconf import DictConfig

from nanogpt.config import ExportConfig, PrepareConfig, RunConfig, SampleConfig, load_run_config, to_object
from nanogpt.distributed import launch_env
from nanogpt.errors import UserError, exit_on_user_error
from nanogpt.runlock import RunDirBusy

log = logging.getLogger("nanogpt")


def run_main(cfg: DictConfig, run_dir: str, overrides: list[str], multirun: bool = False) -> None:
    """Train as `cfg` says. In a sweep a failed job is recorded in its status.json and the sweep goes on;
    otherwise a user error exits 2 with one line, and a signal exits 128 + its number after saving."""
    from nanogpt.train import Interrupted, train

    started = time.time()
    status: dict = {"status": "running"}
    main_rank = launch_env().rank == 0
    if not main_rank and os.path.basename(run_dir).startswith("nanogpt-rank"):
        # Other ranks got a throw-away Hydra dir (config._rank_dir): the run lives in rank 0's.
        atexit.register(shutil.rmtree, run_dir, ignore_errors=True)
    try:
        if cfg.resume:
            from nanogpt.checkpoint import find

            run_dir = cfg.resume
            if os.path.isdir(os.path.join(run_dir, ".hydra")) and find(run_dir) is None:
                raise UserError(f"resume={run_dir}: the run has no checkpoint yet; start it again instead")
            run_cfg = load_run_config(cfg.resume, [o for o in overrides if not o.startswith("resume=")])
        else:
            run_cfg = to_object(cfg, RunConfig)
            if main_rank and not multirun:
                _link_latest(run_dir)
        result = train(run_cfg, run_dir)
        run_dir = result.run_dir
        status = {
            "status": "completed", "iter": result.iter, "best_val_loss": result.best_val_loss,
            "val_loss": result.val_loss, "last_train_loss": result.last_train_loss,
        }  # fmt: skip
    except Interrupted as e:
        status = {"status": "interrupted", "error": str(e)}
        _write_status(run_dir, status, started, main_rank)
        if e.hand_over is None:
            sys.exit(128 + e.signum)
        try:
            e.hand_over()  # submitit requeues the job and exits; it resumes from the checkpoint just saved
        except Exception as why:  # submitit would not requeue it, e.g. after max_num_timeout time limits
            error = f"{e}, not requeued: {why}; continue with python run.py resume={run_dir}"
            status = {"status": "failed", "error": error}
            if not multirun:
                _write_status(run_dir, status, started, main_rank)
                raise
            log.error("job failed: %s", status["error"])
        else:
            sys.exit(128 + e.signum)  # not rank 0: rank 0 requeues the job
    except UserError as e:
        status = {"status": "failed", "error": str(e)}
        if isinstance(e, RunDirBusy) or (cfg.resume and not getattr(e, "during_training", False)):
            main_rank = False  # a refused resume, or a live run's dir: leave the run's record alone
        if not multirun:
            _write_status(run_dir, status, started, main_rank and os.path.isdir(run_dir))
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        log.error("job failed: %s", e)
    except Exception as e:
        status = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        if not multirun:
            _write_status(run_dir, status, started, main_rank and os.path.isdir(run_dir))
            raise
        log.exception("job failed; the sweep goes on")
    _write_status(run_dir, status, started, main_rank)


def _link_latest(run_dir: str) -> None:
    """Point outputs/<experiment>/latest at this run, so `sample.py run=outputs/<experiment>/latest` works."""
    parent, name = os.path.split(os.path.abspath(run_dir))
    tmp = os.path.join(parent, f".latest.tmp-{os.getpid()}")
    os.symlink(name, tmp)
    os.replace(tmp, os.path.join(parent, "latest"))


def _write_status(run_dir: str, status: dict, started: float, write: bool) -> None:
    if not write:
        return
    from nanogpt.data.prepare import atomic_write

    status = {**status, "wall_s": round(time.time() - started, 2)}
    atomic_write(os.path.join(run_dir, "status.json"), (json.dumps(status, indent=1) + "\n").encode())


@exit_on_user_error
def prepare_main(cfg: DictConfig) -> None:
    from nanogpt.data.prepare import prepare

    p: PrepareConfig = to_object(cfg, PrepareConfig)
    prepare(p.data, p.paths.data_dir, force=p.force)


@exit_on_user_error
def sample_main(cfg: DictConfig) -> None:
    from nanogpt.sampling import sample

    sample(to_object(cfg, SampleConfig))


@exit_on_user_error
def export_main(cfg: DictConfig) -> None:
    e: ExportConfig = to_object(cfg, ExportConfig)
    from nanogpt.pretrained import export_run  # torch: after the config is known to be good

    export_run(e.run, e.out, e.checkpoint)
