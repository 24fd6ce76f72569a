"""nanoGPT's `meta.pkl` (`{'vocab_size': int, 'itos': {int: str}, 'stoi': {str: int}}`), read without running code.

A pickle can name any importable callable and have it called while it loads (`__reduce__`). The unpickler here
resolves no name at all, so only the built-in opcodes for dicts, lists, strings and numbers can succeed; whatever
loads is then checked to hold nothing but dicts, lists, strings and ints."""

from __future__ import annotations

import io
import pickle
from typing import Any

from nanogpt.errors import UserError

META = "meta.pkl"


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def read(path: str) -> dict[str, Any]:
    """The checked contents of a nanoGPT meta.pkl; a refusal, in one line, for anything else."""
    try:
        with open(path, "rb") as f:
            meta = _NoGlobals(io.BytesIO(f.read())).load()
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {path}: a nanoGPT meta.pkl holds only dicts, lists, strings and ints, but {e}; "
            "it was not written by nanoGPT's prepare.py"
        ) from None
    except (OSError, EOFError, ValueError, IndexError) as e:
        raise UserError(f"{path} is unreadable ({e}): copy meta.pkl again from the nanoGPT data folder") from None
    if not _plain(meta) or not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int):
        raise UserError(f"{path} is not a nanoGPT meta.pkl: expected a dict with vocab_size, itos and stoi")
    itos, stoi = meta.get("itos"), meta.get("stoi")
    if itos is not None:
        n = meta["vocab_size"]
        chars = [itos.get(i) for i in range(n)] if isinstance(itos, dict) else None
        if chars is None or len(itos) != n or any(not isinstance(c, str) for c in chars):
            raise UserError(f"{path}: itos must map each id 0..{n - 1} to its character")
        if stoi is not None and stoi != {c: i for i, c in enumerate(chars)}:
            raise UserError(f"{path}: stoi is not the inverse of itos; the file is damaged")
    return meta


def chars(meta: dict[str, Any]) -> list[str] | None:
    """A character-level vocabulary, id by id; None for a meta.pkl without one (e.g. a BPE data set's)."""
    itos = meta.get("itos")
    return None if itos is None else [itos[i] for i in range(meta["vocab_size"])]


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int))  # bool is an int: harmless
