"""Hydra's Optuna sweeper for nanogpt: `python run.py -m hydra/sweeper=optuna ...` (docs/hpo.md).

Hydra imports every module under `hydra_plugins` at each start, so these import neither Optuna nor torch; the
search itself lives in nanogpt/cli/optuna_sweep.py."""
