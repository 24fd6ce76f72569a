"""GPT-2 scale, offline: the BPE tokenizer's fallback, BPE data sets (shakespeare, OpenWebText-style, text), the
presets, and a tiny random Hugging Face GPT-2 through load -> finetune -> export -> reload -> sample."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY, compose, hf_env, run_entry

EOT = 50256


@pytest.fixture(scope="module")
def enc():
    from nanogpt.tokenizer import gpt2_encoding

    return gpt2_encoding()


# ---- the tokenizer ----


def test_gpt2_tokenizer_fallback_matches_openai(monkeypatch):
    from nanogpt import tokenizer as tok

    monkeypatch.setattr(tok, "_tiktoken_can_load", lambda: False)  # as with no cache and no network
    tok.gpt2_encoding.cache_clear()
    try:
        gpt2 = tok.GPT2Tokenizer()
        assert gpt2.encode("Hello world") == [15496, 995]
        assert gpt2.encode("<|endoftext|>") == [EOT]
        assert EOT not in gpt2.encode_ordinary("<|endoftext|>")  # documents' text is never a special token
        assert gpt2.decode(gpt2.encode("Où est l'œuf? 🥚")) == "Où est l'œuf? 🥚"
    finally:
        tok.gpt2_encoding.cache_clear()


# ---- data ----


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory, shakespeare) -> Path:
    """A data root holding tiny Shakespeare in GPT-2 BPE, prepared through prepare.py."""
    root = tmp_path_factory.mktemp("bpe")
    run_entry("prepare.py", "data=shakespeare", f"data.source={shakespeare}", f"paths.data_dir={root}", cwd=root)
    return root


def test_prepare_shakespeare_bpe_matches_nanogpt(bpe_data, enc):
    meta = json.loads((bpe_data / "shakespeare" / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_059)  # nanoGPT's data/shakespeare numbers
    assert meta["tokenizer"] == {"kind": "gpt2"} and meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    train = np.fromfile(bpe_data / "shakespeare" / "train.bin", dtype=np.uint16)
    assert len(train) == 301_966 and enc.decode(train[:3].tolist()) == "First Citizen:"


DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "",  # an empty document still ends with end-of-text
    "A document that mentions <|endoftext|> as plain text.",
    "Ünïcödé — 日本語のテキスト — emoji 🦊🐕",
    "  leading spaces\nand\n\nblank lines\n",
] + [f"Document number {i}: " + "lorem ipsum dolor sit amet " * (i % 9) for i in range(55)]


def expected_split(docs: list[str], val_fraction: float) -> dict[str, list[str]]:
    """nanoGPT's OpenWebText split of `docs`, computed here with the datasets call nanoGPT makes."""
    from datasets import Dataset

    parts = Dataset.from_dict({"text": docs}).train_test_split(test_size=val_fraction, seed=2357, shuffle=True)
    return {"train": parts["train"]["text"][:], "val": parts["test"]["text"][:]}


def test_prepare_owt_style_dataset_from_local_files(tmp_path, enc):
    source = tmp_path / "owt.jsonl"
    source.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)), encoding="utf-8")
    args = ["data=owt", f"data.dataset={source}", "data.val_fraction=0.1", "data.num_proc=2"]
    args.append(f"paths.data_dir={tmp_path}")
    run_entry("prepare.py", *args, cwd=tmp_path, env=hf_env(tmp_path))
    out = tmp_path / "owt"
    meta = json.loads((out / "meta.json").read_text())
    want = expected_split(DOCS, 0.1)
    assert meta["documents"] == {"train": 54, "val": 6}
    for split in ("train", "val"):
        # Each document's tokens, then one end-of-text, in the split's document order.
        expected = [t for doc in want[split] for t in [*enc.encode_ordinary(doc), EOT]]
        got = np.fromfile(out / f"{split}.bin", dtype=np.uint16)
        assert meta[f"{split}_tokens"] == len(expected) == len(got)
        assert got.tolist() == expected
        assert int((got == EOT).sum()) == len(want[split])
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no work files left

    # A complete data set is not rebuilt.
    before = (out / "train.bin").stat().st_mtime_ns
    proc = run_entry("prepare.py", *args, cwd=tmp_path, env=hf_env(tmp_path))
    assert "already prepared" in proc.stdout + proc.stderr
    assert (out / "train.bin").stat().st_mtime_ns == before


def test_prepare_text_from_a_local_file(tmp_path, enc, shakespeare):
    text = shakespeare.read_text(encoding="utf-8")[:20_000]
    (tmp_path / "mine.txt").write_text(text, encoding="utf-8")
    run_entry(
        "prepare.py",
        "data=text",
        "data.name=mine",
        f"data.source={tmp_path / 'mine.txt'}",
        f"paths.data_dir={tmp_path}",
        cwd=tmp_path,
    )
    meta = json.loads((tmp_path / "mine" / "meta.json").read_text())
    split_at = int(len(text) * 0.9)
    assert meta["train_tokens"] == len(enc.encode_ordinary(text[:split_at]))
    assert meta["val_tokens"] == len(enc.encode_ordinary(text[split_at:]))


def test_prepare_text_from_a_hf_dataset_with_the_char_tokenizer(tmp_path):
    from datasets import Dataset

    docs = ["hello there", "general kenobi", "ab", "ba", "abc", "héllo"] * 4
    Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "saved"))
    run_entry(
        "prepare.py",
        "data=text",
        "data.name=chars",
        "data.tokenizer=char",
        "data.text_column=body",
        f"data.dataset={tmp_path / 'saved'}",
        "data.val_fraction=0.25",
        f"paths.data_dir={tmp_path}",
        cwd=tmp_path,
    )
    meta = json.loads((tmp_path / "chars" / "meta.json").read_text())
    chars = meta["tokenizer"]["chars"]
    assert chars == sorted(set("".join(docs)) | {"\n"}) and meta["vocab_size"] == len(chars)
    want = expected_split(docs, 0.25)
    for split in ("train", "val"):
        ids = np.fromfile(tmp_path / "chars" / f"{split}.bin", dtype=np.uint16)
        assert "".join(chars[i] for i in ids) == "".join(d + "\n" for d in want[split])  # a newline ends each document


def test_prepare_hf_dataset_mistakes_are_one_clear_line(tmp_path, monkeypatch):
    from nanogpt.config import DataConfig
    from nanogpt.data.documents import prepare_hf_dataset
    from nanogpt.errors import UserError

    proc = run_entry(
        "prepare.py",
        "data=owt",
        f"data.dataset={tmp_path / 'nothing-*.jsonl'}",
        f"paths.data_dir={tmp_path}",
        cwd=tmp_path,
        check=False,
        env=hf_env(tmp_path),
    )
    assert proc.returncode == 2 and "matches no files" in proc.stderr and "Traceback" not in proc.stderr

    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "hf-cache")  # read when loading
    (tmp_path / "d.jsonl").write_text('{"body": "x"}\n{"body": "y"}\n', encoding="utf-8")
    cases = {
        str(tmp_path / "d.jsonl"): "data.text_column='text' is not a column",
        str(tmp_path / "d.docx"): "cannot tell the format",
        "surely/not-a-dataset": "cannot load data.dataset='surely/not-a-dataset'",
    }
    (tmp_path / "d.docx").write_text("x")
    for dataset, message in cases.items():
        with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
            prepare_hf_dataset(DataConfig(name="x", tokenizer="gpt2", dataset=dataset), str(tmp_path / "x"))
    (tmp_path / "one.jsonl").write_text('{"text": "a single document"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="too few to hold out"):
        prepare_hf_dataset(DataConfig(name="x", dataset=str(tmp_path / "one.jsonl")), str(tmp_path / "x"))


# ---- presets ----


def test_presets_match_nanogpt_configs():
    ft = compose("experiment=finetune_shakespeare")
    assert (ft.init_from, ft.data.name, ft.model.block_size) == ("gpt2-xl", "shakespeare", 1024)
    assert (ft.train.batch_size, ft.train.grad_accum, ft.train.max_iters) == (1, 32, 20)
    assert (ft.train.eval_interval, ft.train.eval_iters, ft.train.always_save_checkpoint) == (5, 40, False)
    assert (ft.optim.lr, ft.optim.decay_lr, ft.optim.warmup_iters) == (3e-5, False, 0)

    owt = compose("experiment=gpt2_owt")
    assert (owt.init_from, owt.data.name, owt.model.n_layer, owt.model.block_size) == ("scratch", "owt", 12, 1024)
    assert (owt.train.batch_size, owt.train.grad_accum, owt.train.max_iters) == (12, 40, 600_000)
    assert (owt.train.eval_interval, owt.train.eval_iters) == (1000, 200)
    assert (owt.train.eval_tasks, owt.train.eval_tasks_interval) == (["hellaswag"], 1000)
    owt_optim = owt.optim
    assert (owt_optim.lr, owt_optim.min_lr, owt_optim.warmup_iters) == (6e-4, 6e-5, 2000)
    assert (owt_optim.weight_decay, owt_optim.beta2) == (0.1, 0.95)
    assert owt.device.device == "cuda" and owt.device.compile

    # The short spelling is the same run, but for the device, the name and HellaSwag in the loop (its max_iters is
    # the default's, as the run derives it: nanogpt/sweeps/budgets.py).
    from nanogpt.sweeps.budgets import resolve

    short = compose("model=gpt2", "data=owt")
    short_run, owt_run = resolve(short, 50257)[0], resolve(owt, 50257)[0]
    same_loop = dataclasses.replace(owt_run.train, eval_tasks=[], eval_tasks_interval=None)
    assert (short_run.model, short_run.data, short_run.train) == (owt_run.model, owt_run.data, same_loop)
    assert short.optim.lr_decay_iters in (None, 600_000) and short.optim.lr == owt_optim.lr
    assert short.optim.min_lr == owt_optim.min_lr

    for name, layers in (("gpt2", 12), ("gpt2_medium", 24), ("gpt2_large", 36), ("gpt2_xl", 48)):
        ev = compose(f"experiment=eval_{name}")
        assert (ev.init_from, ev.model.n_layer, ev.data.name) == (name.replace("_", "-"), layers, "owt")
        assert (ev.train.eval_only, ev.train.eval_iters, ev.train.batch_size) == (True, 500, 8)
        assert ev.train.eval_tasks == ["hellaswag"]


# ---- a tiny OpenAI-style GPT-2: load, finetune, export, reload, sample ----


def logits_of(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out.logits if hasattr(out, "logits") else out[0]


def ours_from_checkpoint(run_dir: Path, which: str = "best"):
    from nanogpt import checkpoint
    from nanogpt.config import ModelConfig
    from nanogpt.model import GPT

    ckpt = checkpoint.find(str(run_dir), which)
    model = GPT(ModelConfig(**checkpoint.load_info(ckpt)["model"]))
    checkpoint.load_weights(model, ckpt)
    return model.eval()


def test_hf_gpt2_loads_finetunes_exports_and_samples(tmp_path, bpe_data):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from nanogpt.pretrained import from_huggingface

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    with torch.no_grad():  # every tensor random, so a wrongly mapped one shows
        for p in hf.parameters():
            p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "tiny-gpt2")
    idx = torch.randint(0, 50257, (2, 64))
    ours = from_huggingface(str(tmp_path / "tiny-gpt2")).eval()
    assert (logits_of(ours, idx) - logits_of(hf, idx)).abs().max().item() < 1e-4

    # Finetune a few steps on Shakespeare, with the context cropped to 32.
    run_entry(
        "run.py",
        f"init_from={tmp_path / 'tiny-gpt2'}",
        "data=shakespeare",
        f"paths.data_dir={bpe_data}",
        "device=cpu",
        "model.block_size=32",
        "model.dropout=0.0",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.max_iters=4",
        "train.eval_interval=2",
        "train.eval_iters=2",
        "optim.lr=1e-3",
        "optim.warmup_iters=0",
        "name=ft",
        cwd=tmp_path,
    )
    run = tmp_path / "outputs" / "ft" / "latest"
    tuned = ours_from_checkpoint(run)
    assert tuned.config.block_size == 32 and tuned.config.vocab_size == 50257
    assert not torch.equal(tuned.lm_head.weight, ours.lm_head.weight)  # it trained

    proc = run_entry("export.py", f"run={run}", f"out={tmp_path / 'exported'}", cwd=tmp_path)
    assert "GPT2LMHeadModel.from_pretrained" in proc.stdout + proc.stderr
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "exported").eval()
    assert back.config.n_positions == 32 and back.config.vocab_size == 50257
    short = idx[:, :32]
    assert (logits_of(back, short) - logits_of(tuned, short)).abs().max().item() < 1e-5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "exported")
    assert tokenizer("Hello world").input_ids == [15496, 995] and tokenizer.eos_token_id == EOT

    proc = run_entry(
        "sample.py",
        f"run={run}",
        "start=ROMEO:",
        "num_samples=2",
        "max_new_tokens=8",
        "device.device=cpu",
        cwd=tmp_path,
    )
    assert proc.stdout.count("ROMEO:") == 2


def test_export_char_model_trims_padding_and_zero_fills_biases(tmp_path, char_data):
    from transformers import GPT2LMHeadModel

    run_entry(
        "run.py",
        *TINY,
        f"paths.data_dir={char_data}",
        "model.bias=false",
        "model.pad_vocab_multiple=64",
        "train.max_iters=2",
        "train.eval_interval=2",
        "name=char",
        cwd=tmp_path,
    )
    run = tmp_path / "outputs" / "char" / "latest"
    ours = ours_from_checkpoint(run, "latest")
    assert ours.config.vocab_size == 128 and not ours.config.bias  # 65 characters padded to 128

    proc = run_entry("export.py", f"run={run}", "checkpoint=latest", cwd=tmp_path)
    out = run / "huggingface"
    assert "character-level model" in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "char_vocab.json",
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    assert len(json.loads((out / "char_vocab.json").read_text())) == 65
    back = GPT2LMHeadModel.from_pretrained(out).eval()
    assert back.config.vocab_size == 65
    assert torch.count_nonzero(back.transformer.h[0].attn.c_attn.bias) == 0
    idx = torch.randint(0, 65, (2, 32))
    assert (logits_of(back, idx) - logits_of(ours, idx)[..., :65]).abs().max().item() < 1e-5

    # A folder holding something else is never replaced.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    proc = run_entry("export.py", f"run={run}", f"out={tmp_path / 'notes'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "holds no model" in proc.stderr
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_export_mistakes_are_one_clear_line(tmp_path):
    from nanogpt.errors import UserError
    from nanogpt.runs import export_run

    proc = run_entry("export.py", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "give run=<run dir>" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(UserError, match="does not exist"):
        export_run(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="holds no checkpoint"):
        export_run(str(tmp_path))


def test_export_untied_model_and_refuse_options_gpt2_lacks(tmp_path):
    from transformers import GPT2LMHeadModel

    from nanogpt.config import ModelConfig
    from nanogpt.errors import UserError
    from nanogpt.model import GPT
    from nanogpt.pretrained import to_huggingface

    shape = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
    torch.manual_seed(0)
    ours = GPT(ModelConfig(**shape, tie_embeddings=False, zero_init_proj=True, activation="gelu_exact")).eval()
    with torch.no_grad():  # make the head differ from the embedding, and the zero-initialised projections live
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    to_huggingface(ours, 64, str(tmp_path / "untied"), {"kind": "char", "chars": [chr(65 + i) for i in range(64)]})
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "untied").eval()
    assert not back.config.tie_word_embeddings and back.config.activation_function == "gelu"  # HF's exact GELU
    idx = torch.randint(0, 64, (2, 16))
    assert (logits_of(back, idx) - logits_of(ours, idx)).abs().max().item() < 1e-5

    for option, expect in (
        (dict(rotary=True), "rotary=true"),
        (dict(qk_norm=True), "qk_norm=true"),
        (dict(activation="relu2"), "activation=relu2"),
    ):
        with pytest.raises(UserError, match=f"model.{expect}, which Hugging Face's GPT-2 has no equivalent"):
            to_huggingface(GPT(ModelConfig(**shape, **option)), 64, str(tmp_path / "x"), {"kind": "char"})
    assert not (tmp_path / "x").exists()
