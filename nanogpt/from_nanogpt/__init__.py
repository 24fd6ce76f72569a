"""karpathy/nanoGPT's runs used here as they are: its `ckpt.pt` checkpoints (checkpoint.py), the `meta.pkl` of its
data folders (meta.py), its config files and `--key=value` flags (config_file.py), and resuming its training
(resume.py). Everything is read safely: tensors and plain data only, config files parsed, never executed.

This module imports no torch, so the config checks and Hydra's resolvers can ask what a path is cheaply."""

from __future__ import annotations

import os

CKPT = "ckpt.pt"  # the one checkpoint nanoGPT's train.py keeps in its out_dir


def checkpoint_file(path: str) -> str | None:
    """The nanoGPT checkpoint `path` names (a `.pt` file, or an out_dir holding ckpt.pt), else None. A run dir of
    ours is never one: it has a `.hydra/` folder and `checkpoints/`, not a ckpt.pt."""
    if os.path.isfile(path) and path.endswith(".pt"):
        return path
    candidate = os.path.join(path, CKPT)
    if os.path.isfile(candidate) and not os.path.isdir(os.path.join(path, ".hydra")):
        return candidate
    return None


def is_checkpoint(path: str | None) -> bool:
    return path is not None and checkpoint_file(path) is not None
