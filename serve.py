"""Serve a model over the OpenAI HTTP API: python serve.py run=<run dir> [port=8000 api_key=...] or init_from=gpt2"""

import hydra
from omegaconf import DictConfig

from nanogpt.cli.compose import main_with_clean_errors, register_configs

register_configs("serve_schema")


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    from nanogpt.cli.serve import serve_main

    serve_main(cfg)


if __name__ == "__main__":
    main_with_clean_errors(main)
