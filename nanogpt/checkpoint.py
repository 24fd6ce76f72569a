"""Checkpoints: weights in safetensors, trainer state in a tensors-only torch file, written atomically.

    <run dir>/checkpoints/
        iter-0000250/  model.safetensors  trainer.pt  info.json
        latest -> iter-0000250
        best   -> iter-0000200

A checkpoint is written whole into a temporary folder, fsynced and renamed; only then does the `latest`
(or `best`) link move to it, by an atomic rename. A kill at any moment leaves the previous one intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model

from nanogpt.atomic import atomic_symlink, fsync
from nanogpt.errors import UserError

WEIGHTS, STATE, INFO = "model.safetensors", "trainer.pt", "info.json"
_ITER_DIR = re.compile(r"^iter-(\d+)(?:-\d+)?$")


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def find(run_dir: str, which: str = "latest") -> str | None:
    """The folder of a run's `latest` or `best` checkpoint, or None if it has none."""
    link = os.path.join(checkpoints_dir(run_dir), which)
    return os.path.realpath(link) if os.path.isdir(link) else None


def save(
    run_dir: str,
    model: torch.nn.Module | dict[str, torch.Tensor],
    state: dict[str, Any],
    info: dict[str, Any],
    *,
    as_latest: bool = True,
    as_best: bool = False,
    keep_last: int = 1,
) -> str:
    """Write a checkpoint and point `latest` and/or `best` at it; returns its folder. `model` is the module,
    or its whole state dict with tied weights kept once (what an FSDP run gathers on rank 0)."""
    root = checkpoints_dir(run_dir)
    os.makedirs(root, exist_ok=True)
    name = _free_name(root, f"iter-{info['iter']:07d}")
    final, tmp = os.path.join(root, name), os.path.join(root, f"{name}.tmp-{os.getpid()}")
    try:
        os.makedirs(tmp)
        if isinstance(model, dict):
            save_file({k: v.contiguous() for k, v in model.items()}, os.path.join(tmp, WEIGHTS))
        else:
            save_model(model, os.path.join(tmp, WEIGHTS))
        torch.save(state, os.path.join(tmp, STATE))
        with open(os.path.join(tmp, INFO), "w") as f:
            json.dump(info, f, indent=1)
        for f in os.listdir(tmp):
            fsync(os.path.join(tmp, f))
        os.rename(tmp, final)
        fsync(root)
        for link, wanted in (("latest", as_latest), ("best", as_best)):
            if wanted:
                _point(root, link, name)
    except (OSError, SafetensorError, RuntimeError) as e:  # disk full, quota, I/O error
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise UserError(
            f"could not write a checkpoint in {root} ({reason}): free disk space or fix the folder; "
            "the previous checkpoint is intact"
        ) from None
    _prune(root, keep_last)
    return final


def _free_name(root: str, name: str) -> str:
    """`name`, or `name-1`, `name-2`... when a checkpoint of that iteration exists already (it may be in
    use as `best`, and is never overwritten)."""
    candidate, n = name, 0
    while os.path.exists(os.path.join(root, candidate)):
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _point(root: str, link: str, target: str) -> None:
    atomic_symlink(target, os.path.join(root, link))
    fsync(root)


def _prune(root: str, keep_last: int) -> None:
    """Delete checkpoints that are neither `best` nor among the `keep_last` newest, and leftovers of
    writes that were killed."""
    keep = {os.path.basename(os.path.realpath(os.path.join(root, link))) for link in ("latest", "best")}
    dirs = sorted(
        (d for d in os.listdir(root) if _ITER_DIR.match(d)),
        key=lambda d: os.path.getmtime(os.path.join(root, d)),
    )
    keep.update(dirs[-keep_last:])
    for d in os.listdir(root):
        path = os.path.join(root, d)
        if (_ITER_DIR.match(d) and d not in keep) or (".tmp-" in d and not d.endswith(f".tmp-{os.getpid()}")):
            if os.path.islink(path) or not os.path.isdir(path):
                os.remove(path)
            else:
                shutil.rmtree(path, ignore_errors=True)


def file_sha256(path: str) -> str:
    """A weights file's sha256, read in chunks (a GPT-2 XL's weights are 6 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_info(ckpt: str) -> dict[str, Any]:
    try:
        with open(os.path.join(ckpt, INFO)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {ckpt} is unreadable ({e}): resume from another checkpoint") from None


def load_weights(model: torch.nn.Module, ckpt: str) -> None:
    """Load weights into a model of the checkpoint's shape."""
    path = os.path.join(ckpt, WEIGHTS)
    try:
        load_model(model, path, strict=True, device=str(next(model.parameters()).device))
    except (SafetensorError, OSError) as e:
        raise UserError(f"checkpoint weights {path} are corrupt or truncated ({e}): use another checkpoint") from None
    except RuntimeError as e:
        raise UserError(
            f"checkpoint weights {path} do not fit this model ({str(e).splitlines()[0]}): "
            "resume with the config the checkpoint was trained with"
        ) from None


def load_state(ckpt: str) -> dict[str, Any]:
    """The trainer state, unpickled with `weights_only=True`: tensors and plain containers, never code."""
    path = os.path.join(ckpt, STATE)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"({str(e).splitlines()[0]}); only load checkpoints written by nanogpt"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        raise UserError(f"trainer state {path} is corrupt or truncated ({e}): use another checkpoint") from None
