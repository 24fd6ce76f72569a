"""sample.py's main: generate text from a run or a pretrained GPT-2."""

from __future__ import annotations

from omegaconf import DictConfig

from nanogpt.cli.compose import to_object
from nanogpt.cli.startup import importing_torch
from nanogpt.config import SampleConfig
from nanogpt.errors import exit_on_user_error


@exit_on_user_error
def sample_main(cfg: DictConfig) -> None:
    with importing_torch():
        from nanogpt.sampling import sample

    sample(to_object(cfg, SampleConfig))
