"""Data at today's scale, offline: FineWeb-style sets streamed into shards (a local folder laid out like the hub
repo stands in for it), resumable preparation killed with SIGKILL, llm.c shards written here, OpenWebText's
script refusal answered with the Parquet conversion, one reader for one file or many shards."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import OFFLINE_ENV, REPO, TINY, hf_env, one_line_error, run_dirs, run_entry

EOT = 50256
SHARD = 20_000  # tokens per shard in the streamed test set
VAL = 30_000  # its val split: one full shard and a part of the next


def files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def enc():
    from nanogpt.tokenizer import gpt2_encoding

    return gpt2_encoding()


# ---- a stand-in for the hub's FineWeb-Edu: its README's subsets, Parquet files under sample/10BT/ ----


def documents(shakespeare: Path, copies: int = 2) -> list[str]:
    speeches = shakespeare.read_text(encoding="utf-8").split("\n\n")
    docs = ["\n\n".join(speeches[i : i + 7]) for i in range(0, len(speeches), 7)] * copies
    # Text that must stay text: the end-of-text marker, an empty document, characters outside ASCII.
    return docs[:5] + ["a <|endoftext|> in the text", "", "Ünïcödé — 日本語 🦊"] + docs[5:]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, shakespeare) -> tuple[Path, list[str]]:
    """A folder laid out as HuggingFaceFW/fineweb-edu (configs in the README, Parquet files per subset), and its
    documents in stream order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("fineweb-edu")
    docs = documents(shakespeare)
    (root / "sample" / "10BT").mkdir(parents=True)
    bounds = [0, len(docs) // 3, 2 * len(docs) // 3, len(docs)]
    for i in range(3):
        part = docs[bounds[i] : bounds[i + 1]]
        table = pa.table({"text": part, "id": [f"{i}-{j}" for j in range(len(part))], "score": [3.5] * len(part)})
        pq.write_table(table, root / "sample" / "10BT" / f"00{i}_00000.parquet", row_group_size=100)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n"
    )
    return root, docs


def stream_args(hub_dir: Path, data_dir: Path, num_proc: int = 2) -> list[str]:
    return [
        "data=fineweb_edu",
        f"data.dataset={hub_dir}",
        f"data.val_tokens={VAL}",
        f"data.shard_tokens={SHARD}",
        f"data.num_proc={num_proc}",
        f"paths.data_dir={data_dir}",
    ]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, hub) -> Path:
    """The stand-in streamed through prepare.py without interruption: the reference for the tests below."""
    root = tmp_path_factory.mktemp("streamed")
    proc = run_entry("prepare.py", *stream_args(hub[0], root), cwd=root, env=hf_env(root))
    assert "docs" in proc.stderr and "MB/s" in proc.stderr and "tok" in proc.stderr  # the progress bar
    return root / "fineweb_edu_sample-10BT"


def read_split(path: Path, split: str) -> np.ndarray:
    """A sharded set's split, its shards read with the llm.c module and concatenated."""
    from nanogpt.data import llmc_shards as llmc

    meta = json.loads((path / "meta.json").read_text())
    folder = Path(meta["shards"].get("dir") or path)
    return np.concatenate([np.asarray(llmc.read_tokens(str(folder / s["file"]))) for s in meta["shards"][split]])


def test_streamed_set_is_the_tokenized_stream_cut_into_exact_shards(streamed, hub, enc):
    docs = hub[1]
    stream = np.array([t for d in docs for t in [EOT, *enc.encode_ordinary(d)]], dtype=np.uint16)
    meta = json.loads((streamed / "meta.json").read_text())
    # val is the stream's first VAL tokens (a document cut in two), train the rest; every shard but the last
    # of each split holds exactly SHARD tokens.
    assert np.array_equal(read_split(streamed, "val"), stream[:VAL])
    assert np.array_equal(read_split(streamed, "train"), stream[VAL:])
    assert (meta["val_tokens"], meta["train_tokens"]) == (VAL, len(stream) - VAL)
    for split in ("train", "val"):
        sizes = [s["tokens"] for s in meta["shards"][split]]
        assert all(n == SHARD for n in sizes[:-1]) and 0 < sizes[-1] <= SHARD
    starts = np.flatnonzero(stream == EOT)
    assert meta["documents"] == {"val": int((starts < VAL).sum()), "train": int((starts >= VAL).sum())}
    assert meta["documents"]["val"] + meta["documents"]["train"] == len(docs)
    text_bytes = sum(len(d.encode()) for d in docs)
    assert meta["bytes_per_token"] == round(text_bytes / len(stream), 4)
    assert meta["source"].endswith("(sample-10BT), streamed") and meta["tokenizer"] == {"kind": "gpt2"}
    names = sorted(p.name for p in streamed.iterdir())
    assert names == sorted(["meta.json"] + [s["file"] for sp in ("train", "val") for s in meta["shards"][sp]])


def test_streamed_max_tokens_stops_early(tmp_path, hub):
    from nanogpt.config import DataConfig
    from nanogpt.data.stream import prepare_stream

    data = DataConfig(
        name="x",
        tokenizer="gpt2",
        dataset=str(hub[0]),
        subset="sample-10BT",
        streaming=True,
        val_tokens=1000,
        shard_tokens=3000,
        max_tokens=7000,
    )
    out = prepare_stream(data, str(tmp_path / "x"))
    meta = json.loads(Path(out, "meta.json").read_text())
    assert (meta["val_tokens"], meta["train_tokens"]) == (1000, 7000)
    assert [s["tokens"] for s in meta["shards"]["train"]] == [3000, 3000, 1000]


def test_encoder_treats_special_text_as_plain_text_as_encode_ordinary(enc):
    from nanogpt.data.stream import Encoder

    texts = ["", "a <|endoftext|> b", "Ünïcödé — 日本語 🦊", "  spaces\n\nand lines\n"]
    with Encoder(2) as encoder:
        tokens, lens = encoder.encode(texts)
    assert tokens.tolist() == [t for x in texts for t in [EOT, *enc.encode_ordinary(x)]]
    assert lens.tolist() == [len(enc.encode_ordinary(x)) + 1 for x in texts]


def test_killed_preparation_resumes_to_the_same_bytes(tmp_path, hub, streamed):
    """SIGKILL at random moments while shards are being written, restart each time:
    the finished folder is byte-identical to the uninterrupted preparation's."""
    rng = random.Random(1234)
    out = tmp_path / "fineweb_edu_sample-10BT"
    cmd = [sys.executable, str(REPO / "prepare.py"), *stream_args(hub[0], tmp_path, num_proc=1)]
    env = {**os.environ, **OFFLINE_ENV, **hf_env(tmp_path)}
    kills, attempts = 0, 0
    while kills < 2 and attempts < 10:  # kill a run once it has written a shard, at a random moment after
        attempts += 1
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, deadline = len(list(out.glob("*.bin"))), time.time() + 60
        while proc.poll() is None and time.time() < deadline and len(list(out.glob("*.bin"))) <= before:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.02))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            assert not (out / "meta.json").exists()
        else:  # on a quiet machine it can finish before the kill: start again from nothing, and kill a later run
            shutil.rmtree(out)
    assert kills >= 2
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert files(out) == files(streamed)


def test_resume_after_each_shard_writes_the_same_shards(tmp_path, hub, streamed, monkeypatch):
    """The same, deterministic and in process: the preparation dies right after shard k is recorded, for
    several k, and a fresh call finishes it."""
    from nanogpt.config import DataConfig
    from nanogpt.data import shard_writer as writer
    from nanogpt.data.stream import prepare_stream

    data = DataConfig(
        name="x",
        tokenizer="gpt2",
        dataset=str(hub[0]),
        subset="sample-10BT",
        streaming=True,
        val_tokens=VAL,
        shard_tokens=SHARD,
        num_proc=2,
    )
    save = writer.ShardedWriter._save_progress

    class Killed(BaseException):
        pass

    for k in (1, 2, 4):
        calls = []

        def dying(self, *args, k=k, calls=calls):
            save(self, *args)
            calls.append(1)
            if len(calls) == k:
                raise Killed

        monkeypatch.setattr(writer.ShardedWriter, "_save_progress", dying)
        with pytest.raises(Killed):
            prepare_stream(data, str(tmp_path / "x"))
    monkeypatch.setattr(writer.ShardedWriter, "_save_progress", save)
    prepare_stream(data, str(tmp_path / "x"))
    assert files(tmp_path / "x") == files(streamed)


# ---- one reader: a sharded set and the same tokens in one file ----


def write_one_file_copy(sharded: Path, out: Path) -> None:
    """The same tokens as `sharded`, as train.bin/val.bin and a meta.json without shards."""
    meta = json.loads((sharded / "meta.json").read_text())
    out.mkdir(parents=True)
    for split in ("train", "val"):
        read_split(sharded, split).tofile(out / f"{split}.bin")
    single = {k: v for k, v in meta.items() if k != "shards"}
    (out / "meta.json").write_text(json.dumps(single))


def test_shards_read_as_one_sequence(tmp_path, streamed):
    from nanogpt.data.batches import Batches

    write_one_file_copy(streamed, tmp_path / "one")
    a = Batches(str(streamed), 256, 8, 4, 1337, __import__("torch").device("cpu"))
    b = Batches(str(tmp_path / "one"), 256, 8, 4, 1337, __import__("torch").device("cpu"))
    assert len(a.data["train"].files) > 1 and len(b.data["train"].files) == 1
    crossing = 0
    for step in range(60):
        for micro in range(4):
            xa, ya = a.train(step, micro)
            xb, yb = b.train(step, micro)
            assert xa.equal(xb) and ya.equal(yb)
        starts = a._starts  # windows that straddle two shards are read from both
        crossing += int(
            np.any(
                (starts[:, None] < a.data["train"].ends[:-1]) & (starts[:, None] + 257 > a.data["train"].ends[:-1]),
                axis=1,
            ).sum()
        )
    assert crossing > 0
    for k in range(5):
        assert all(t.equal(u) for t, u in zip(a.eval("val", k), b.eval("val", k), strict=True))


def write_llmc_set(folder: Path, seed: int = 0, sizes: tuple = (7000, 5000, 6000), val: int = 4000) -> None:
    from nanogpt.data import llmc_shards as llmc

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    llmc.write_shard(str(folder / "fineweb_val_000000.bin"), rng.integers(0, 50257, val).astype(np.uint16))
    for i, n in enumerate(sizes, start=1):
        llmc.write_shard(str(folder / f"fineweb_train_{i:06d}.bin"), rng.integers(0, 50257, n).astype(np.uint16))


def test_llmc_shards_folder_and_the_same_tokens_in_one_file_train_bit_identically(tmp_path):
    import torch
    from safetensors.torch import load_file

    from nanogpt.config import DataConfig
    from nanogpt.data.prepare import prepare

    write_llmc_set(tmp_path / "shards")
    data = tmp_path / "data"
    prepare(DataConfig(name="fineweb10b_gpt2", tokenizer="gpt2", shards_dir=str(tmp_path / "shards")), str(data))
    meta = json.loads((data / "fineweb10b_gpt2" / "meta.json").read_text())
    assert meta["shards"]["dir"] == str(tmp_path / "shards") and meta["train_tokens"] == 18000
    assert sorted(p.name for p in (data / "fineweb10b_gpt2").iterdir()) == ["meta.json"]  # shards used in place
    write_one_file_copy(data / "fineweb10b_gpt2", data / "one")
    runs = {}
    common = [
        *TINY,
        f"paths.data_dir={data}",
        "data=fineweb10b_gpt2",
        "train.max_iters=6",
        "train.eval_interval=3",
        "train.grad_accum=2",
    ]
    for name in ("fineweb10b_gpt2", "one"):
        run_entry("run.py", *common, f"data.name={name}", f"name={name}", cwd=tmp_path)
        runs[name] = run_dirs(tmp_path, name)[-1]
    rows = {k: [json.loads(x) for x in (v / "metrics.jsonl").read_text().splitlines()] for k, v in runs.items()}
    keep = ("iter", "loss", "train_loss", "val_loss")
    assert [[r.get(k) for k in keep] for r in rows["one"]] == [
        [r.get(k) for k in keep] for r in rows["fineweb10b_gpt2"]
    ]
    a, b = (load_file(str(v / "checkpoints" / "latest" / "model.safetensors")) for v in runs.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- llm.c shards ----


def test_llmc_format_round_trip_and_damaged_headers(tmp_path):
    from nanogpt.data import llmc_shards as llmc
    from nanogpt.errors import UserError

    tokens = np.arange(1000, dtype=np.uint16)
    llmc.write_shard(str(tmp_path / "a.bin"), tokens)
    raw = (tmp_path / "a.bin").read_bytes()
    assert np.frombuffer(raw[:12], dtype="<i4").tolist() == [20240520, 1, 1000] and len(raw) == 1024 + 2000
    assert not any(raw[12:1024])
    assert np.array_equal(llmc.read_tokens(str(tmp_path / "a.bin")), tokens)
    bad = {
        "magic": raw[:0] + np.int32(12345).tobytes() + raw[4:],
        "truncated": raw[:-2],
        "short": raw[:100],
        "version": raw[:4] + np.int32(7).tobytes() + raw[8:],
    }
    needles = {"magic": "magic number 12345", "truncated": "truncated", "short": "shorter", "version": "version 7"}
    for kind, payload in bad.items():
        (tmp_path / f"{kind}.bin").write_bytes(payload)
        with pytest.raises(UserError, match=needles[kind]) as e:
            llmc.read_header(str(tmp_path / f"{kind}.bin"))
        assert "\n" not in str(e.value)


def test_pretokenized_download_with_a_local_stand_in_for_the_hub(tmp_path, monkeypatch):
    """The download path with huggingface_hub replaced by a copier from a local folder: the right file names,
    into the data set's folder, and a second prepare downloads nothing."""
    import shutil

    from nanogpt.config import DataConfig
    from nanogpt.data import pretokenized
    from nanogpt.data.prepare import prepare

    write_llmc_set(tmp_path / "repo", sizes=(3000, 3000, 3000, 3000))
    asked = []

    def fake_download(*, repo_id, filename, repo_type, local_dir):
        assert (repo_id, repo_type) == ("kjj0/fineweb10B-gpt2", "dataset")
        asked.append(filename)
        return shutil.copy(tmp_path / "repo" / filename, Path(local_dir) / filename)

    monkeypatch.setattr(pretokenized, "hf_hub_download", fake_download)
    data = DataConfig(name="fineweb10b_gpt2", tokenizer="gpt2", dataset="kjj0/fineweb10B-gpt2", shards=2)
    out = Path(prepare(data, str(tmp_path / "data")))
    assert asked == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"], meta["shards"]["dir"]) == (6000, 4000, None)
    prepare(data, str(tmp_path / "data"))
    assert len(asked) == 3


@pytest.mark.parametrize("case", ["empty", "mixed", "versions", "llama", "out_of_vocab", "char", "no_val", "missing"])
def test_bad_shards_folder_is_one_line_and_prepares_nothing(tmp_path, case):
    from nanogpt.config import DataConfig
    from nanogpt.data import llmc_shards as llmc
    from nanogpt.data.prepare import prepare
    from nanogpt.errors import UserError

    folder = tmp_path / "shards"
    folder.mkdir()
    if case not in ("empty", "missing"):
        write_llmc_set(folder, sizes=(2000,), val=1000)
    if case == "mixed":
        np.save(folder / "edufineweb_train_000002.npy", np.zeros(10, np.uint16))
    elif case in ("versions", "llama"):
        v2 = np.zeros(100, "<u4")
        with open(folder / "fineweb_train_000002.bin", "wb") as f:
            f.write(llmc.header(100, version=2) + v2.tobytes())
        if case == "llama":
            for p in folder.glob("*_00000[01].bin"):
                p.unlink()
            with open(folder / "fineweb_val_000000.bin", "wb") as f:
                f.write(llmc.header(100, version=2) + v2.tobytes())
    elif case == "out_of_vocab":
        llmc.write_shard(str(folder / "fineweb_train_000002.bin"), np.array([1, 2, 60000], np.uint16))
    elif case == "no_val":
        (folder / "fineweb_val_000000.bin").unlink()
    needle = {
        "empty": "holds no llm.c .bin shards",
        "mixed": "mixes formats",
        "versions": "mixes llm.c shard formats",
        "llama": "LLaMA 3 tokens",
        "out_of_vocab": "token id 60000",
        "char": "does not match",
        "no_val": "holds no val shard",
        "missing": "is not a folder",
    }[case]
    shards_dir = folder if case != "missing" else tmp_path / "nowhere"
    data = DataConfig(name="set", tokenizer="char" if case == "char" else "gpt2", shards_dir=str(shards_dir))
    with pytest.raises(UserError, match=needle) as e:
        prepare(data, str(tmp_path / "data"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "data" / "set" / "meta.json").exists()


def test_bad_magic_is_one_line_from_the_entry_point(tmp_path):
    write_llmc_set(tmp_path / "shards", sizes=(2000,), val=1000)
    (tmp_path / "shards" / "fineweb_train_000002.bin").write_bytes(b"\x00" * 2048)
    proc = run_entry(
        "prepare.py",
        "data=fineweb10b_gpt2",
        f"data.shards_dir={tmp_path / 'shards'}",
        f"paths.data_dir={tmp_path / 'data'}",
        cwd=tmp_path,
        check=False,
    )
    one_line_error(proc, "fineweb_train_000002.bin", "magic number 0")
    assert not list((tmp_path / "data").rglob("meta.json"))


def test_hub_sets_with_no_network_and_no_local_copy_are_one_line(tmp_path):
    """The presets as they stand, under HF_HUB_OFFLINE (as with no network), nothing downloaded before."""
    from hydra import compose, initialize_config_dir

    from nanogpt.cli.compose import register_configs, to_object
    from nanogpt.config import PrepareConfig
    from nanogpt.data.prepare import prepare
    from nanogpt.errors import UserError

    register_configs()
    for preset in (["data=fineweb_edu"], ["data=fineweb"], ["data=fineweb10b_gpt2", "data.shards=1"]):
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg: PrepareConfig = to_object(compose("prepare", preset), PrepareConfig)
        with pytest.raises(UserError, match="network") as e:
            prepare(cfg.data, str(tmp_path / "data"))
        assert "\n" not in str(e.value) and not list((tmp_path / "data").rglob("meta.json"))


def test_bad_streaming_input_is_one_line_and_leaves_nothing_trusted(tmp_path, hub, monkeypatch):
    from nanogpt.config import DataConfig
    from nanogpt.data.prepare import prepare
    from nanogpt.errors import UserError

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf-cache")
    base = {"name": "x", "tokenizer": "gpt2", "dataset": str(hub[0]), "subset": "sample-10BT", "streaming": True}
    cases = [
        ({"subset": "sample-7BT"}, "data.subset='sample-7BT' is not a subset of"),
        ({"max_tokens": 10**15}, "GB free"),
        ({"val_tokens": 10**7}, "lower data.val_tokens"),
        ({"text_column": "body"}, "data.text_column='body' is not a column"),
        ({"tokenizer": "char"}, "cannot stream"),
    ]
    for override, needle in cases:
        with pytest.raises(UserError, match=needle) as e:
            prepare(DataConfig(**{**base, **override}), str(tmp_path))
        assert "\n" not in str(e.value)
        assert not (tmp_path / "x" / "meta.json").exists()
        assert not list((tmp_path / "x").glob("*.bin")) if (tmp_path / "x").exists() else True


# ---- OpenWebText on datasets>=4: the script is refused, the Parquet conversion is read ----


def test_openwebtext_falls_back_to_the_parquet_conversion(tmp_path, monkeypatch, caplog, enc):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nanogpt.config import DataConfig
    from nanogpt.data.documents import prepare_hf_dataset

    docs = [f"Document {i}: " + "web text " * (i % 7) for i in range(40)]
    (tmp_path / "parquet" / "plain_text" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"text": docs}), tmp_path / "parquet" / "plain_text" / "train" / "0000.parquet")
    load = datasets.load_dataset
    calls = []

    def hub(path, name=None, **kw):  # the hub as datasets 5 sees Skylion007/openwebtext: a script, and its conversion
        calls.append(kw.get("revision"))
        if kw.get("revision") is None:
            raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")
        assert path == "Skylion007/openwebtext" and kw["revision"] == "refs/convert/parquet"
        return load(str(tmp_path / "parquet"), cache_dir=str(tmp_path / "hf-cache"))

    monkeypatch.setattr(datasets, "load_dataset", hub)
    from omegaconf import OmegaConf

    owt = OmegaConf.load(REPO / "conf" / "data" / "owt.yaml")  # the preset's values
    data = DataConfig(**{**OmegaConf.to_container(owt), "val_fraction": 0.1, "num_proc": 1})
    with caplog.at_level(logging.INFO):
        out = Path(prepare_hf_dataset(data, str(tmp_path / "owt")))
    assert calls == [None, "refs/convert/parquet"]
    assert "refs/convert/parquet" in caplog.text and "loading script" in caplog.text
    assert "not the 8,013,769" in caplog.text  # a partial conversion is said, not hidden
    meta = json.loads((out / "meta.json").read_text())
    assert meta["source"] == "datasets: Skylion007/openwebtext @ refs/convert/parquet"
    parts = datasets.Dataset.from_dict({"text": docs}).train_test_split(test_size=0.1, seed=2357, shuffle=True)
    for split, part in (("train", parts["train"]), ("val", parts["test"])):
        want = [t for d in part["text"] for t in [*enc.encode_ordinary(d), EOT]]
        assert np.fromfile(out / f"{split}.bin", dtype=np.uint16).tolist() == want
