"""prepare.py's main: build a data set's token files."""

from __future__ import annotations

from omegaconf import DictConfig

from nanogpt.cli.compose import given_keys, to_object
from nanogpt.config import PrepareConfig
from nanogpt.errors import exit_on_user_error


@exit_on_user_error
def prepare_main(cfg: DictConfig, overrides: list[str]) -> None:
    from nanogpt.data.prepare import prepare

    p: PrepareConfig = to_object(cfg, PrepareConfig)
    prepare(p.data, p.paths.data_dir, force=p.force, source_given="data.source" in given_keys(overrides))
