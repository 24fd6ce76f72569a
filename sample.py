"""Generate text: python sample.py run=<run dir> [start=... num_samples=...] or init_from=gpt2"""

import hydra
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("sample_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.sample import sample_main

    sample_main(cfg)


if __name__ == "__main__":
    main_with_clean_errors(main)
