"""Export a run as a Hugging Face GPT-2 folder: python export.py run=<run dir> [out=<folder>] [checkpoint=latest]"""

import hydra
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("export_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.export import export_main

    export_main(cfg)


if __name__ == "__main__":
    main_with_clean_errors(main)
