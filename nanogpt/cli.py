"""The Hydra boundary: the schemas in Hydra's ConfigStore, our resolvers, composition errors as one line, a run's
saved config loaded back, and what each entry point does with its composed config (validate, run, status.json,
exit codes). The rest of the package takes typed config objects (nanogpt/config.py) and never touches Hydra."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nanogpt.config import EvalConfig, ExportConfig, PrepareConfig, RunConfig, SampleConfig, validate
from nanogpt.errors import FailedDuringTraining, UserError, exit_on_user_error
from nanogpt.files import atomic_symlink, atomic_write_text

log = logging.getLogger("nanogpt")

# Groups chosen at composition time: a saved run's config cannot switch them, only change keys.
_GROUPS = ("model", "data", "optim", "device", "logger", "experiment")


# ---- composition: schemas, resolvers, errors ----


# Each entry point's conf/<name>.yaml starts from one of these (its defaults list names it).
_SCHEMAS = {
    "run_schema": RunConfig,
    "prepare_schema": PrepareConfig,
    "sample_schema": SampleConfig,
    "export_schema": ExportConfig,
    "eval_schema": EvalConfig,
}


def register_configs(*schemas: str) -> None:
    """Put the schemas (all, or those named: an entry point names its own, as converting each one costs a few ms
    at every start) in Hydra's ConfigStore and our resolvers in OmegaConf (entry points call this)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for name in schemas or _SCHEMAS:
        cs.store(name=name, node=_SCHEMAS[name])
    if not OmegaConf.has_resolver("nanogpt.rank_dir"):
        OmegaConf.register_new_resolver("nanogpt.rank_dir", _rank_dir)
        OmegaConf.register_new_resolver("nanogpt.subdir", _hydra_subdir)


def main_with_clean_errors(main: Callable[[], Any]) -> None:
    """Run a `@hydra.main` function so that a config Hydra cannot compose (unknown key or option, wrong
    type, bad override syntax) prints one line naming it and exits 2, instead of Hydra's multi-line report.
    NANOGPT_TRACEBACK=1 shows the full traceback instead. Free-text values (any script, symbols) are quoted
    for Hydra's grammar first (nanogpt/overrides.py), so `start=床前明月光` works as typed."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from nanogpt.overrides import quote_free_text

    sys.argv[1:] = quote_free_text(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us; tracebacks stay for bugs
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        if os.environ.get("NANOGPT_TRACEBACK") == "1":
            raise
        print(f"error: {config_error_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)


def config_error_line(e: BaseException) -> str:
    """One line saying which key, option or override was wrong and what to do."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    def first_line(x: BaseException) -> str:
        return str(x).strip().splitlines()[0] if str(x).strip() else type(x).__name__

    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None)  # OmegaConf's errors carry the key they concern
    if isinstance(e, MissingConfigException) and e.options:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        return f"{group}={name} is not an option: choose one of {', '.join(sorted(e.options))}"
    if isinstance(e, OverrideParseException):
        from nanogpt.overrides import quoting_hint

        return f"cannot parse the override {e.override!r} ({first_line(e)}): {quoting_hint(e.override)}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return f"unknown key {key}: check its spelling; `--cfg job` prints every key"
    if isinstance(cause, ValidationError) and key:
        return f"{key}: {first_line(cause)}; give a value of the right type"
    return first_line(e) + (f" ({first_line(cause)})" if cause is not e else "")


# Hydra creates its run dir (and a log in it) before our code runs. Where that dir must not be touched, it gets a
# throw-away dir under this prefix instead, removed at exit: on other ranks (each process resolves `${now:}` for
# itself and could land a second apart from rank 0; they learn rank 0's dir once the process group is up), and
# for a `resume=` that names no run, which is then refused without leaving a dir behind.
_SCRATCH_DIR = "nanogpt-scratch-"


def _launch_rank() -> int:
    from nanogpt.launch import launch_env

    return launch_env().rank


def _rank_dir(run_dir: str, resume: str | None) -> str:
    """The run dir Hydra should create for this process: the dated dir, or the resumed run's, on rank 0."""
    rank = _launch_rank()
    if rank > 0 or (resume and not os.path.isfile(os.path.join(resume, ".hydra", "config.yaml"))):
        return os.path.join(tempfile.gettempdir(), f"{_SCRATCH_DIR}rank{rank}-{os.getpid()}")
    return resume if resume else run_dir


def _is_scratch_dir(run_dir: str) -> bool:
    return os.path.basename(run_dir).startswith(_SCRATCH_DIR)


def _hydra_subdir(resume: str | None) -> str | None:
    """Hydra saves the composed config in `.hydra/` except on other ranks and when resuming a run,
    whose `.hydra/config.yaml` is the record of how it started and must not be overwritten."""
    return None if resume or _launch_rank() > 0 else ".hydra"


def to_object(cfg: DictConfig | Any, schema: type) -> Any:
    """A composed Hydra config as its validated dataclass."""
    # Hydra's `+key=value` can slip a key past the schema: name it rather than ignore it.
    extra = _unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)
    if extra:
        raise UserError(f"unknown key {extra[0]}: check its spelling; `--cfg job` prints every key")
    # Hydra composes an entry point's config on top of its schema (the first entry of its defaults list): it comes
    # typed and checked, and merging it into the schema again would cost ~10 ms at every start.
    if OmegaConf.get_type(cfg) is not schema:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    obj = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def _unknown_keys(values: Any, schema: type, prefix: str = "") -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    out = []
    for key, value in values.items() if isinstance(values, dict) else ():
        if key not in fields:
            out.append(prefix + str(key))
        elif dataclasses.is_dataclass(fields[key].default_factory if callable(fields[key].default_factory) else None):
            out += _unknown_keys(value, fields[key].default_factory, f"{prefix}{key}.")
    return out


def load_run_config(run_dir: str, overrides: list[str] | None = None) -> RunConfig:
    """The config a run was started with (its `.hydra/config.yaml`), with `key=value` overrides applied."""
    if not os.path.isdir(run_dir):
        raise UserError(f"{run_dir!r} does not exist: give a run dir written by run.py (outputs/<experiment>/...)")
    path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir!r} is not a run dir (no .hydra/config.yaml): pass the dir a run.py run wrote")
    bad = [o for o in overrides or [] if "=" not in o or o.split("=", 1)[0].lstrip("+~") in _GROUPS]
    if bad:
        raise UserError(f"cannot change {bad[0]!r} when resuming: only key=value overrides apply to a saved run")
    saved = OmegaConf.load(path)
    cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), saved, _override_values(overrides or []))
    cfg.resume = None
    obj = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def _override_values(overrides: list[str]) -> DictConfig:
    """`key=value` overrides as a config, values read by Hydra's own grammar (quoted free text included)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    values = OmegaConf.create()
    for o in OverridesParser.create().parse_overrides(overrides):
        OmegaConf.update(values, o.key_or_group, o.value(), force_add=True)
    return values


# ---- the entry points ----


@contextlib.contextmanager
def _importing_torch() -> Iterator[None]:
    """Around an entry point's first import of torch: Python's garbage collector paused during it, then what it
    made frozen out of the collector's reach (gc.freeze). torch and its compiler stack are about a million objects
    that live as long as the process, and each full collection walks them all: several ran during start-up
    (~0.4 s of run.py's 2.6 s to its first step on a 2-core Zen 4) and the last ones at exit (~0.8 s). Objects
    made later are collected as usual. Once per process: with torch already imported (a second job of a sweep,
    a library user) this does nothing, so no garbage of theirs is frozen."""
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


def run_main(cfg: DictConfig, run_dir: str, overrides: list[str], multirun: bool = False) -> None:
    """Train as `cfg` says. In a sweep a failed job is recorded in its status.json and the sweep goes on;
    otherwise a user error exits 2 with one line, and a signal exits 128 + its number after saving."""
    with _importing_torch():
        import torch._dynamo  # noqa: F401  every torch.optim optimizer imports it when built: frozen with torch

        from nanogpt.runlock import RunDirBusy
        from nanogpt.signals import Interrupted
        from nanogpt.train import train

    started = time.time()
    status: dict = {"status": "running"}
    main_rank = _launch_rank() == 0
    if _is_scratch_dir(run_dir):
        import atexit
        import shutil

        atexit.register(shutil.rmtree, run_dir, ignore_errors=True)  # not the run's dir: see _rank_dir
    try:
        run_dir, run_cfg = _run_config(cfg, run_dir, overrides, link_latest=main_rank and not multirun)
        result = train(run_cfg, run_dir)
        run_dir = result.run_dir
        status = {
            "status": "completed",
            "iter": result.iter,
            "best_val_loss": result.best_val_loss,
            "val_loss": result.val_loss,
            "last_train_loss": result.last_train_loss,
        }
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
        if isinstance(e, RunDirBusy) or (cfg.resume and not isinstance(e, FailedDuringTraining)):
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


def _run_config(cfg: DictConfig, run_dir: str, overrides: list[str], link_latest: bool) -> tuple[str, RunConfig]:
    """The run dir and validated config of a new run, or of the run `resume=<dir>` continues."""
    if not cfg.resume:
        run_cfg = to_object(cfg, RunConfig)
        if link_latest:
            # outputs/<experiment>/latest -> this run, so `sample.py run=outputs/<experiment>/latest` works.
            parent, name = os.path.split(os.path.abspath(run_dir))
            atomic_symlink(name, os.path.join(parent, "latest"))
        return run_dir, run_cfg
    from nanogpt.checkpoint import find

    run_cfg = load_run_config(cfg.resume, [o for o in overrides if not o.startswith("resume=")])
    if find(cfg.resume) is None:
        # Killed before its first checkpoint: nothing to continue from, but a restart-until-done loop must still
        # make progress in this dir.
        log.warning("resume=%s has no checkpoint yet: starting the run from the beginning, in that dir", cfg.resume)
    return cfg.resume, run_cfg


def _write_status(run_dir: str, status: dict, started: float, write: bool) -> None:
    if write:
        status = {**status, "wall_s": round(time.time() - started, 2)}
        atomic_write_text(os.path.join(run_dir, "status.json"), json.dumps(status, indent=1) + "\n")


@exit_on_user_error
def prepare_main(cfg: DictConfig) -> None:
    from nanogpt.data.prepare import prepare

    p: PrepareConfig = to_object(cfg, PrepareConfig)
    prepare(p.data, p.paths.data_dir, force=p.force)


@exit_on_user_error
def sample_main(cfg: DictConfig) -> None:
    with _importing_torch():
        from nanogpt.sampling import sample

    sample(to_object(cfg, SampleConfig))


@exit_on_user_error
def export_main(cfg: DictConfig) -> None:
    e: ExportConfig = to_object(cfg, ExportConfig)
    with _importing_torch():
        from nanogpt.runs import export_run  # torch: after the config is known to be good

    export_run(e.run, e.out, e.checkpoint)


@exit_on_user_error
def eval_main(cfg: DictConfig, overrides: list[str]) -> None:
    e: EvalConfig = to_object(cfg, EvalConfig)
    if e.run is not None and e.eval.hellaswag_file is None:
        # The run's own local HellaSwag file (given to run.py offline), so it need not be repeated here.
        with contextlib.suppress(UserError):  # not a run dir: the evaluation says so, naming the checkpoint
            e.eval.hellaswag_file = load_run_config(e.run).eval.hellaswag_file
    with _importing_torch():
        from nanogpt.eval.command import evaluate  # torch: after the config is known to be good

    evaluate(e, overrides)
