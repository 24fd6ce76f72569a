"""eval.py's main: score a run or a pretrained GPT-2 on downstream tasks."""

from __future__ import annotations

import contextlib

from omegaconf import DictConfig

from nanogpt.cli.compose import load_run_config, to_object
from nanogpt.cli.startup import importing_torch
from nanogpt.config import EvalConfig
from nanogpt.errors import UserError, exit_on_user_error


@exit_on_user_error
def eval_main(cfg: DictConfig, overrides: list[str]) -> None:
    e: EvalConfig = to_object(cfg, EvalConfig)
    if e.run is not None and e.eval.hellaswag_file is None:
        # The run's own local HellaSwag file (given to run.py offline), so it need not be repeated here.
        with contextlib.suppress(UserError):  # not a run dir: the evaluation says so, naming the checkpoint
            e.eval.hellaswag_file = load_run_config(e.run).eval.hellaswag_file
    with importing_torch():
        from nanogpt.eval.command import run_eval  # torch: after the config is known to be good

    run_eval(e, overrides)
