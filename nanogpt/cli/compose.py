"""Composition: our schemas in Hydra's ConfigStore, a composed config as its validated dataclass, a run's saved
config loaded back, and what Hydra or OmegaConf refuse as one line instead of a report."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nanogpt.config import ChatConfig, EvalConfig, ExportConfig, PrepareConfig, RunConfig, SampleConfig, ServeConfig
from nanogpt.errors import UserError
from nanogpt.validation import validate

# Groups chosen at composition time: a saved run's config cannot switch them, only change keys.
GROUPS = ("model", "data", "optim", "device", "logger", "finetune", "experiment")

# Each entry point's conf/<name>.yaml starts from one of these (its defaults list names it).
SCHEMAS = {
    "run_schema": RunConfig,
    "prepare_schema": PrepareConfig,
    "sample_schema": SampleConfig,
    "export_schema": ExportConfig,
    "eval_schema": EvalConfig,
    "chat_schema": ChatConfig,
    "serve_schema": ServeConfig,
}


def register_configs(*schemas: str) -> None:
    """Put the schemas (all, or those named: an entry point names its own, as converting each one costs time
    at every start) in Hydra's ConfigStore and our resolvers in OmegaConf (entry points call this)."""
    from hydra.core.config_store import ConfigStore

    from nanogpt.cli.rundirs import register_resolvers

    cs = ConfigStore.instance()
    for name in schemas or SCHEMAS:
        cs.store(name=name, node=SCHEMAS[name])
    register_resolvers()


def main_with_clean_errors(main: Callable[[], Any]) -> None:
    """Run a `@hydra.main` function so that a config Hydra cannot compose (unknown key or option, wrong
    type, bad override syntax) prints one line naming it and exits 2, instead of Hydra's multi-line report.
    NANOGPT_TRACEBACK=1 shows the full traceback instead. Free-text values (any script, symbols) are quoted
    for Hydra's grammar first (nanogpt/cli/quoting.py), so `start=床前明月光` works as typed."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from nanogpt.cli.quoting import quote_free_text

    sys.argv[1:] = quote_free_text(sys.argv[1:])
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let composition errors reach us; tracebacks stay for bugs
    try:
        main()
    except (HydraException, OmegaConfBaseException, UserError) as e:  # UserError: a sweeper's refusal
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
        from nanogpt.cli.quoting import quoting_hint

        return f"cannot parse the override {e.override!r} ({first_line(e)}): {quoting_hint(e.override)}"
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        return f"unknown key {key}: check its spelling; `--cfg job` prints every key"
    if isinstance(cause, ValidationError) and key:
        return f"{key}: {first_line(cause)}; give a value of the right type"
    if first_line(e).startswith("Ambiguous value for argument"):  # a comma list in a single run: say the choices
        return f"{first_line(e)}: add -m to sweep over its values, or write a list as key=[a,b]"
    return first_line(e) + (f" ({first_line(cause)})" if cause is not e else "")


def to_object(cfg: DictConfig | Any, schema: type) -> Any:
    """A composed Hydra config as its validated dataclass."""
    # Hydra's `+key=value` can slip a key past the schema: name it rather than ignore it.
    extra = _unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)
    if extra:
        raise UserError(f"unknown key {extra[0]}: check its spelling; `--cfg job` prints every key")
    # Hydra composes an entry point's config on top of its schema (the first entry of its defaults list): it comes
    # typed and checked, and merging it into the schema again would cost time at every start (docs/BENCHMARKS.md).
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


def given_keys(overrides: list[str]) -> set[str]:
    """The keys a command line's `key=value` overrides set (`+key`, `++key` and `~key` as `key`): what the user
    gave explicitly, as opposed to what a preset or a default says."""
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def load_run_config(run_dir: str, overrides: list[str] | None = None) -> RunConfig:
    """The config a run was started with (its `.hydra/config.yaml`), with `key=value` overrides applied."""
    from nanogpt.rundir import check_run_dir

    path = check_run_dir(run_dir)
    bad = [o for o in overrides or [] if "=" not in o or o.split("=", 1)[0].lstrip("+~") in GROUPS]
    if bad:
        raise UserError(f"cannot change {bad[0]!r} when resuming: only key=value overrides apply to a saved run")
    try:
        saved = OmegaConf.load(path)
    except Exception as e:  # yaml's ScannerError, ParserError, ...: the file is damaged, not our code
        problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{path} is not valid YAML ({problem}): repair it, or restore it from a copy of the run"
        ) from None
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


def with_overrides(cfg: DictConfig, *overrides: list[str]) -> RunConfig:
    """A composed run config with lists of `key=value` overrides applied in turn, validated."""
    merged = OmegaConf.merge(cfg, *(_override_values(o) for o in overrides))
    return to_object(merged, RunConfig)
