"""Our local launcher for Hydra sweeps: `python run.py -m hydra/launcher=local ...` (conf/hydra/launcher/local.yaml).

Hydra imports every module under `hydra_plugins` at each start, so these import neither submitit nor torch until a
sweep launches."""
