"""Chat with a run finetuned on conversations: python chat.py run=<run dir> [prompt="..." temperature=...]"""

import hydra
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("chat_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="chat")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.chat import chat_main

    chat_main(cfg)


if __name__ == "__main__":
    main_with_clean_errors(main)
