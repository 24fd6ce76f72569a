"""Build a data set's token files: python prepare.py data=shakespeare_char [data.source=...]"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("prepare_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.prepare import prepare_main

    prepare_main(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main_with_clean_errors(main)
