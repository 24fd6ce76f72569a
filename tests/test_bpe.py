"""A byte-level BPE trained on the user's own text (data.tokenizer=bpe), in any script: preparation from every
kind of source, exact round trips, equality with tokenizers and with the exported AutoTokenizer, determinism,
bits per byte, sampling, resume and export, and every bad input as one line."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import math
import os
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY, hf_env, one_line_error, run_dirs, run_entry

LINES = [
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "今日はいい天気ですね。明日は雨が降るでしょう。カタカナとひらがな。",
    "مرحبا بالعالم، هذه جملة قصيرة للاختبار.",
    "Héllo wörld — naïve café, señor; Grüße aus Köln.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Emoji: 😀🎉🚀 👨\u200d👩\u200d👧\u200d👦 🇯🇵 ✨",
    "Tabs\tand   runs    of     spaces\n\n\nand blank lines",
]
VAL_ONLY = "zqxjvw"  # a word only the validation text holds: no merge may contain it
ROUND_TRIP = [
    "床前明月光，疑是地上霜。",
    "東京都の天気：晴れ、ときどき曇り。カタカナ・ひらがな",
    "مرحبا بالعالم! ١٢٣ والأرقام",
    "😀 🎉🚀👨\u200d👩\u200d👧\u200d👦🇯🇵🏳️\u200d🌈",
    "mixed: English 中文 日本語 العربية русский 한국어 ελληνικά",
    "   leading\t\ttabs\n\n\n   trailing   \r\n\u3000\u00a0 \u2028",
    "odd but valid: \ufffd \ufeff \u200b e\u0301 \U0010ffff \uffff \x00 \x7f \ud7ff",
    "<|endoftext|> stands in the text",
    "",
]
VOCAB = 512


def corpus_text() -> str:
    """About 40 KB of mixed scripts, the last tenth (validation) ending with a word seen nowhere else."""
    rng = random.Random(0)
    text = "\n".join(" ".join(rng.sample(LINES, 4)) for _ in range(150))
    return text + (" " + VAL_ONLY) * (len(text) // 100)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` but the run lock (a refused resume takes it, writing its pid)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def prepare_here(tmp_path: Path, name: str, tokenizer: str, source: str, **kw) -> dict:
    """prepare.py's work in this process (a subprocess costs seconds of imports); returns meta.json."""
    from nanogpt.config import DataConfig, PrepareConfig
    from nanogpt.data.prepare import prepare
    from nanogpt.validation import validate

    data = DataConfig(name=name, tokenizer=tokenizer, source=source, **kw)
    validate(PrepareConfig(data=data))
    return json.loads((Path(prepare(data, str(tmp_path))) / "meta.json").read_text())


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    """A tiny run trained on the mixed-script corpus with a trained BPE: run.py prepares the data set itself.
    Its path, data set name and run name are not ASCII, typed as a user would."""
    root = tmp_path_factory.mktemp("bpe")
    (root / "文本.txt").write_text(corpus_text(), encoding="utf-8")
    args = [
        "data=text",
        "data.name=诗",
        f"data.source={root / '文本.txt'}",
        "data.tokenizer=bpe",
        f"data.vocab_size={VOCAB}",
        f"paths.data_dir={root / 'data'}",
        "name=实验",
    ]
    run_entry("run.py", *TINY, *args, "train.max_iters=4", "train.eval_interval=2", cwd=root)
    return run_dirs(root, "实验")[-1]


def data_of(run: Path) -> Path:
    return run.parents[2] / "data" / "诗"


@pytest.fixture(scope="module")
def ours(bpe_run):
    from nanogpt.tokenizer import BPETokenizer

    return BPETokenizer((data_of(bpe_run) / "tokenizer.json").read_text(encoding="utf-8"))


# ---- the tokenizer ----


def test_byte_alphabet_is_gpt2s():
    """Our byte -> character table against GPT-2's own files: token i < 256 of encoder.json is one byte, which
    tiktoken's GPT-2 names, written as that byte's character; tokenizers' alphabet is the same 256 characters."""
    from tokenizers import pre_tokenizers

    from nanogpt.bpe import byte_alphabet
    from nanogpt.tokenizer import gpt2_bpe_files, gpt2_encoding

    encoder = json.loads(Path(gpt2_bpe_files()["encoder.json"]).read_text(encoding="utf-8"))
    gpt2 = gpt2_encoding()
    singles = {gpt2.decode_single_token_bytes(i)[0]: token for token, i in encoder.items() if i < 256}
    assert byte_alphabet() == singles
    assert set(byte_alphabet().values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_round_trips_and_equals_tokenizers(bpe_run, ours):
    """decode(encode(s)) == s in every script, and our ids (tiktoken) are those of the tokenizers library reading
    the same tokenizer.json, on the test strings and on the whole corpus."""
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(data_of(bpe_run) / "tokenizer.json"))
    for s in [*ROUND_TRIP, corpus_text()]:
        ids = ours.encode(s)
        assert ours.decode(ids) == s and ours.token_bytes(ids) == s.encode("utf-8")
        assert ids == reference.encode(s).ids, s[:40]
        assert reference.decode(ids, skip_special_tokens=False) == s
    assert ours.encode("<|endoftext|>") == [ours.eot_token] == [0]
    assert ours.eot_token not in ours.encode_ordinary("<|endoftext|>")  # documents' text is never special


def test_prepared_data_set_records_tokenizer_bytes_and_compression(bpe_run, ours):
    from nanogpt.tokenizer import gpt2_encoding

    data = data_of(bpe_run)
    meta = json.loads((data / "meta.json").read_text())
    definition = (data / "tokenizer.json").read_bytes()
    assert meta["tokenizer"] == {
        "kind": "bpe",
        "file": "tokenizer.json",
        "sha256": hashlib.sha256(definition).hexdigest(),
        "vocab_size": VOCAB,
    }
    assert meta["vocab_size"] == VOCAB and meta["bpe"]["vocab_size"] == VOCAB and meta["dtype"] == "uint16"
    assert (bpe_run / "tokenizer.json").read_bytes() == definition  # the run dir carries its own copy

    text = corpus_text()
    n = int(len(text) * 0.9)
    for split, part in (("train", text[:n]), ("val", text[n:])):
        tokens = np.fromfile(data / f"{split}.bin", dtype=np.uint16).tolist()
        assert tokens == ours.encode_ordinary(part)  # one file: one document, no end-of-text
        assert meta["bytes_per_token"][split] == pytest.approx(len(part.encode()) / len(tokens), abs=1e-6)
    # Trained on the train split only: the word only validation holds was never merged.
    assert not any(VAL_ONLY[:3] in t for t in json.loads(definition)["model"]["vocab"])
    gpt2_tokens = len(gpt2_encoding().encode_ordinary(text[n:]))
    assert meta["compression"]["gpt2"]["tokens"] == gpt2_tokens
    assert meta["compression"]["bpe"]["tokens"] == meta["val_tokens"]
    assert meta["compression"]["text_bytes"] == len(text[n:].encode())


def test_every_evaluation_logs_bits_per_byte(bpe_run):
    meta = json.loads((data_of(bpe_run) / "meta.json").read_text())
    evals = [json.loads(line) for line in (bpe_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "val_loss" in r]
    assert [r["iter"] for r in evals] == [0, 2, 4]
    for r in evals:
        for split in ("train", "val"):
            assert r[f"{split}_bpb"] == pytest.approx(r[f"{split}_loss"] / math.log(2) / meta["bytes_per_token"][split])
    assert "bits/byte" in (bpe_run / "run.log").read_text(encoding="utf-8")


def test_streamed_samples_never_split_a_character(ours):
    """Tokens fed one at a time: every piece printed is whole characters, though tokens end inside them."""
    from nanogpt.sampling import print_stream

    class Pieces(io.StringIO):
        def write(self, s: str) -> int:
            assert "\ufffd" not in s, s
            return super().write(s)

    for s in ROUND_TRIP[:5]:
        out = Pieces()
        assert print_stream(iter(ours.encode_ordinary(s)), ours, None, out) == s and out.getvalue() == s
    # The test means something: characters the corpus never had are cut into byte tokens.
    ids = ours.encode_ordinary(ROUND_TRIP[1])
    assert any(ours.decode(ids[:i]).endswith("\ufffd") for i in range(1, len(ids)))
    out = Pieces()
    assert print_stream(iter(ours.encode_ordinary(ROUND_TRIP[0])), ours, "。", out) == "床前明月光，疑是地上霜"
    assert out.getvalue() == "床前明月光，疑是地上霜"


def test_sample_export_and_autotokenizer_agree(bpe_run, ours, tmp_path):
    """sample.py takes a Chinese prompt and stop string as typed; export.py writes a tokenizer that transformers'
    AutoTokenizer loads and that encodes and decodes exactly as ours."""
    proc = run_entry(
        "sample.py",
        f"run={bpe_run}",
        "start=床前明月光",
        "stop=<|endoftext|>",
        "num_samples=1",
        "max_new_tokens=12",
        cwd=tmp_path,
    )
    assert proc.stdout.startswith("床前明月光")
    run_entry("export.py", f"run={bpe_run}", f"out={tmp_path / '导出'}", cwd=tmp_path)
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = AutoTokenizer.from_pretrained(tmp_path / "导出")
    for s in [*ROUND_TRIP, corpus_text()]:
        ids = ours.encode(s)
        assert hf.encode(s) == ids, s[:40]
        assert hf.decode(ids) == s
    assert hf.eos_token_id == ours.eot_token
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "导出")
    assert model.config.vocab_size == VOCAB and model.config.eos_token_id == ours.eot_token
    # sample.py init_from=<the export> samples with the exported tokenizer, not GPT-2's.
    from nanogpt.config import SampleConfig
    from nanogpt.sampling import load_for_sampling

    _, tokenizer, vocab = load_for_sampling(SampleConfig(init_from=str(tmp_path / "导出")))
    assert vocab == VOCAB and tokenizer.encode(corpus_text()) == ours.encode(corpus_text())


# ---- sources and determinism ----


def expected_tokens(ours, docs: list[str]) -> list[int]:
    out: list[int] = []
    for i, doc in enumerate(docs):
        out += ([ours.eot_token] if i else []) + ours.encode_ordinary(doc)
    return out


def test_deterministic_and_every_source(tmp_path):
    """The same corpus and settings give the same tokenizer.json and token files byte for byte, whatever the hash
    seed and threads; a folder's files are documents separated by end-of-text; a URL gives the same as its file."""
    from nanogpt.tokenizer import BPETokenizer

    folder = tmp_path / "docs"
    folder.mkdir()
    text = corpus_text()
    docs = [text[: len(text) // 3], text[len(text) // 3 : 2 * len(text) // 3], text[2 * len(text) // 3 :]]
    for i, doc in enumerate(docs):
        (folder / f"{i}.txt").write_text(doc, encoding="utf-8")
    common = ["data=text", "data.tokenizer=bpe", "data.vocab_size=300", f"paths.data_dir={tmp_path}"]
    one = {"PYTHONHASHSEED": "1", "RAYON_NUM_THREADS": "1"}
    two = {"PYTHONHASHSEED": "2", "RAYON_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "true"}
    for name, env in (("a", one), ("b", two)):
        run_entry("prepare.py", *common, f"data.name={name}", f"data.source={folder}", cwd=tmp_path, env=env)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    ours = BPETokenizer((tmp_path / "a" / "tokenizer.json").read_text(encoding="utf-8"))
    n = int(len(text) * 0.9)  # in the third file: the train split holds two whole documents and part of the third
    want = {"train": [docs[0], docs[1], text[2 * len(text) // 3 : n]], "val": [text[n:]]}
    for split in ("train", "val"):
        got = np.fromfile(tmp_path / "a" / f"{split}.bin", dtype=np.uint16).tolist()
        assert got == expected_tokens(ours, want[split])

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/0.txt"
        prepare_here(tmp_path, "url", "bpe", url, vocab_size=300)
    finally:
        server.shutdown()
    prepare_here(tmp_path, "file", "bpe", str(folder / "0.txt"), vocab_size=300)
    for f in ("tokenizer.json", "train.bin", "val.bin"):
        assert (tmp_path / "url" / f).read_bytes() == (tmp_path / "file" / f).read_bytes()


def test_hf_dataset_documents_end_with_endoftext(tmp_path):
    from datasets import Dataset

    from nanogpt.tokenizer import BPETokenizer

    rng = random.Random(1)
    docs = [" ".join(rng.sample(LINES, 3)) for _ in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    run_entry(
        "prepare.py",
        "data=text",
        "data.name=hf",
        f"data.dataset={tmp_path / 'docs.jsonl'}",
        "data.tokenizer=bpe",
        "data.vocab_size=300",
        "data.num_proc=1",
        f"paths.data_dir={tmp_path}",
        cwd=tmp_path,
        env=hf_env(tmp_path),
    )
    out = tmp_path / "hf"
    meta = json.loads((out / "meta.json").read_text())
    ours = BPETokenizer((out / "tokenizer.json").read_text(encoding="utf-8"))
    parts = Dataset.from_dict({"text": docs}).train_test_split(test_size=0.1, seed=2357, shuffle=True)
    for split, part in (("train", parts["train"]["text"]), ("val", parts["test"]["text"])):
        want = [t for doc in part for t in [*ours.encode_ordinary(doc), ours.eot_token]]
        assert np.fromfile(out / f"{split}.bin", dtype=np.uint16).tolist() == want
        assert meta["bytes_per_token"][split] == pytest.approx(sum(len(d.encode()) for d in part) / len(want))
    assert meta["document_end"] == "<|endoftext|>" and "gpt2" in meta["compression"]


def test_bytes_per_token_for_char_and_gpt2_data_sets(tmp_path):
    """Every tokenizer records bytes per token, so bits per byte compares a char model with a BPE one."""
    from nanogpt.tokenizer import gpt2_encoding

    text = corpus_text()
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    n = int(len(text) * 0.9)
    for kind, count in (("char", len), ("gpt2", lambda s: len(gpt2_encoding().encode_ordinary(s)))):
        meta = prepare_here(tmp_path, kind, kind, str(tmp_path / "t.txt"))
        for split, part in (("train", text[:n]), ("val", text[n:])):
            assert meta["bytes_per_token"][split] == pytest.approx(len(part.encode()) / count(part), abs=1e-6)


# ---- bad input ----


def test_bad_bpe_settings_are_one_line_and_write_nothing(tmp_path):
    from nanogpt.errors import UserError

    (tmp_path / "t.txt").write_text(corpus_text(), encoding="utf-8")
    proc = run_entry(
        "prepare.py",
        "data=text",
        "data.tokenizer=bpe",
        "data.vocab_size=256",
        f"data.source={tmp_path / 't.txt'}",
        f"paths.data_dir={tmp_path / 'data'}",
        cwd=tmp_path,
        check=False,
    )
    one_line_error(proc, "data.vocab_size=256", "at least 257")
    for kw, named in (
        ({"vocab_size": 2**32 + 1}, f"data.vocab_size={2**32 + 1}"),
        ({}, "needs data.vocab_size"),
        ({"vocab_size": 512, "bpe_pattern": "(unclosed"}, "data.bpe_pattern='(unclosed'"),
    ):
        with pytest.raises(UserError, match=named.replace("(", r"\(")):
            prepare_here(tmp_path / "data", "bad", "bpe", str(tmp_path / "t.txt"), **kw)
    with pytest.raises(UserError, match="only applies to data.tokenizer=bpe"):
        prepare_here(tmp_path / "data", "bad", "gpt2", str(tmp_path / "t.txt"), vocab_size=1000)
    # Pre-tokenized shards are GPT-2's tokens already, and a stream cannot be read twice.
    with pytest.raises(UserError, match="data.shards/data.shards_dir are already GPT-2 tokens"):
        prepare_here(tmp_path / "data", "bad", "bpe", None, vocab_size=512, shards_dir=str(tmp_path))
    with pytest.raises(UserError, match="which a stream cannot give"):
        prepare_here(tmp_path / "data", "bad", "bpe", None, vocab_size=512, streaming=True, dataset="x")
    assert not (tmp_path / "data").exists()


def test_altered_or_missing_tokenizer_is_one_line(bpe_run, tmp_path):
    """A tokenizer.json that is not the one meta.json or the checkpoint recorded: refused by training and by
    sampling, nothing written; a run without its tokenizer.json cannot be sampled."""
    run = tmp_path / "run"
    shutil.copytree(bpe_run, run, symlinks=True)
    data = tmp_path / "data"
    shutil.copytree(data_of(bpe_run), data / "诗")
    (data / "诗" / "tokenizer.json").write_text(
        (data / "诗" / "tokenizer.json").read_text(encoding="utf-8").replace('"vocab":{', '"vocab":{"x":9999,'),
        encoding="utf-8",
    )
    before = snapshot(data)
    proc = run_entry("run.py", f"resume={run}", f"paths.data_dir={data}", cwd=tmp_path, check=False)
    one_line_error(proc, "tokenizer.json", "not the tokenizer")
    assert snapshot(data) == before

    from nanogpt.config import SampleConfig
    from nanogpt.errors import UserError
    from nanogpt.sampling import load_for_sampling

    (run / "tokenizer.json").write_bytes(b"{}")
    with pytest.raises(UserError, match="tokenizer.json is not the tokenizer this run was made with"):
        load_for_sampling(SampleConfig(run=str(run)))
    os.remove(run / "tokenizer.json")
    proc = run_entry("sample.py", f"run={run}", "max_new_tokens=2", cwd=tmp_path, check=False)
    one_line_error(proc, "tokenizer.json is missing")


def test_resume_with_another_tokenizer_is_refused(bpe_run, tmp_path):
    """The same settings on another text train another tokenizer: its hash differs, and resume refuses it."""
    run = tmp_path / "run"
    shutil.copytree(bpe_run, run, symlinks=True)
    root = bpe_run.parents[2]
    data = tmp_path / "data"
    source = tmp_path / "文本.txt"
    source.write_text(corpus_text()[::-1], encoding="utf-8")
    prepare_here(data, "诗", "bpe", str(source), vocab_size=VOCAB)
    before = snapshot(run)
    proc = run_entry(
        "run.py",
        f"resume={run}",
        f"paths.data_dir={data}",
        f"data.source={source}",
        "train.max_iters=6",
        cwd=root,
        check=False,
    )
    one_line_error(proc, "tokenized differently")
    assert snapshot(run) == before


def test_data_set_of_other_settings_or_source_is_refused(tmp_path, caplog):
    """A data set is used only under the tokenizer it was prepared with: another vocabulary under the same
    data.name is refused (it would train on the first one) until rebuilt with force=true; another local text is
    a warning (a prepared set is reused whatever data.source says)."""
    from nanogpt.errors import UserError

    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(corpus_text(), encoding="utf-8")
    prepare_here(tmp_path, "mine", "bpe", str(tmp_path / "a.txt"), vocab_size=300)
    before = snapshot(tmp_path / "mine")
    with pytest.raises(UserError, match="prepared with data.tokenizer=bpe, data.vocab_size=300, not as asked"):
        prepare_here(tmp_path, "mine", "bpe", str(tmp_path / "a.txt"), vocab_size=400)
    prepare_here(tmp_path, "mine", "bpe", str(tmp_path / "b.txt"), vocab_size=300)
    assert f"prepared from {tmp_path / 'a.txt'}, not data.source={tmp_path / 'b.txt'}" in caplog.text
    with pytest.raises(UserError, match="prepared with data.tokenizer=bpe, not as asked"):
        prepare_here(tmp_path, "mine", "char", str(tmp_path / "a.txt"))
    assert snapshot(tmp_path / "mine") == before


def test_bits_per_byte_and_the_sweep_report(tmp_path):
    """bits per byte = loss / ln 2 / bytes per token of that split; a data set prepared before bytes were
    recorded gives none (no error); the sweep report ranks jobs on it too."""
    from nanogpt.bits_per_byte import bits_per_byte
    from nanogpt.sweeps.report import write_report

    assert bits_per_byte({"train": 2.0, "val": 3.0}, {"bytes_per_token": {"train": 4.0, "val": 3.5}}) == {
        "train_bpb": pytest.approx(2.0 / math.log(2) / 4.0),
        "val_bpb": pytest.approx(3.0 / math.log(2) / 3.5),
    }
    assert bits_per_byte({"val": 3.0}, {"vocab_size": 65}) == {}
    assert bits_per_byte({"val": 3.0}, {"bytes_per_token": 4.5}) == {"val_bpb": pytest.approx(3.0 / math.log(2) / 4.5)}
    for job, bpb in (("0", [1.5, 1.2, 1.3]), ("1", [])):
        (tmp_path / job).mkdir()
        records = [{"iter": i, "val_loss": 2.0 - i / 10, **({"val_bpb": b} if b else {})} for i, b in enumerate(bpb)]
        records = records or [{"iter": 0, "val_loss": 2.0}]
        (tmp_path / job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(str(tmp_path))
    rows = (tmp_path / "report.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert [r.split(",")[header.index("best_val_bpb")] for r in rows[1:]] == ["1.2", ""]


def test_small_text_gives_a_smaller_vocabulary_with_a_warning(tmp_path, caplog):
    (tmp_path / "t.txt").write_text(LINES[0] * 20, encoding="utf-8")
    meta = prepare_here(tmp_path, "small", "bpe", str(tmp_path / "t.txt"), vocab_size=4096)
    assert 257 < meta["vocab_size"] < 4096 and meta["bpe"]["vocab_size"] == 4096
    assert f"only enough distinct pairs for {meta['vocab_size']} tokens, not data.vocab_size=4096" in caplog.text
