"""export.py's main: write a run as a Hugging Face GPT-2 folder."""

from __future__ import annotations

from omegaconf import DictConfig

from nanogpt.cli.compose import to_object
from nanogpt.cli.startup import importing_torch
from nanogpt.config import ExportConfig
from nanogpt.errors import exit_on_user_error


@exit_on_user_error
def export_main(cfg: DictConfig) -> None:
    e: ExportConfig = to_object(cfg, ExportConfig)
    with importing_torch():
        from nanogpt.runs import export_run  # torch: after the config is known to be good

    export_run(e.run or e.init_from, e.out, e.checkpoint)  # type: ignore[arg-type]
