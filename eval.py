"""Score a model on downstream tasks: python eval.py run=<run dir> tasks=[hellaswag] [harness=[arc_easy,...]]
or init_from=gpt2; results in <run dir>/eval/<checkpoint>.json"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("eval_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.eval import eval_main

    eval_main(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main_with_clean_errors(main)
