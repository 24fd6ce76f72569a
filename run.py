"""Train, finetune or evaluate a GPT: python run.py experiment=shakespeare_char_cpu [key=value ...]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("run_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.run import run_main

    hc = HydraConfig.get()
    run_main(cfg, hc.runtime.output_dir, list(hc.overrides.task), multirun=hc.mode.name == "MULTIRUN")


if __name__ == "__main__":
    main_with_clean_errors(main)
