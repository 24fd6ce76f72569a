"""The Hydra callback (conf/train.yaml's `hydra.callbacks`) that writes a sweep's report once its jobs returned."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("nanogpt")


class ReportCallback(Callback):
    """Write report.md, report.csv and the plots into the sweep dir at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from nanogpt.sweeps.report import write_report

        sweep_dir = str(config.hydra.sweep.dir)
        try:
            paths = write_report(sweep_dir)
        except Exception as e:  # the jobs' results are on disk whatever happens here; the report can be redone
            log.warning(
                "no sweep report (%s: %s); write it with python -m nanogpt.sweeps %s", type(e).__name__, e, sweep_dir
            )
            return
        log.info("sweep report: %s", ", ".join(paths))
