"""nanogpt: train, finetune and sample GPT models, configured with Hydra."""

__version__ = "0.1.0"
