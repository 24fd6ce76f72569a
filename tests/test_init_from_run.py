"""Finetuning from a run of ours: `init_from=<run dir>` brings the run's shape, tokenizer and weights, and the new
run records where it came from."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import one_line_error, run_entry, train, weights

from nanogpt.errors import UserError

MODERN = ["model.rotary=true", "model.qk_norm=true", "model.activation=relu2", "model.tie_embeddings=false"]


@pytest.fixture(scope="module")
def source(tmp_path_factory, char_data):
    """A finished tiny run with every modern option (no Hugging Face model could hold it)."""
    tmp = tmp_path_factory.mktemp("source")
    return train(tmp, char_data, *MODERN, "train.max_iters=4", "train.eval_interval=2", "name=src", name="src")


def test_finetune_starts_from_the_runs_best_weights_and_records_them(tmp_path, char_data, source):
    # lr 0: the finetune's weights stay the source's, so any mapping or shape mistake shows as a difference.
    tuned = train(
        tmp_path, char_data, f"init_from={source}", "optim.lr=0", "optim.min_lr=0", "optim.muon_lr=0",
        "train.max_iters=2", "train.eval_interval=2", "name=ft", name="ft",
    )  # fmt: skip
    best = (source / "checkpoints" / "best").resolve()
    info = json.loads((tuned / "checkpoints" / "latest" / "info.json").read_text())
    origin = info["init_from"]
    assert origin["run"] == str(source.resolve()) and origin["checkpoint"] == str(best)
    assert origin["iter"] == json.loads((best / "info.json").read_text())["iter"]
    assert origin["sha256"] == hashlib.sha256((best / "model.safetensors").read_bytes()).hexdigest()
    # The shape came from the run, though the command line named none of its modern options.
    assert {k: info["model"][k] for k in ("rotary", "qk_norm", "activation", "tie_embeddings")} == {
        "rotary": True, "qk_norm": True, "activation": "relu2", "tie_embeddings": False,
    }  # fmt: skip
    a, b = weights(source, "best"), weights(tuned, "latest")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_latest_checkpoint_and_a_shape_the_run_overrides_is_said(tmp_path, char_data, source):
    proc_dir = tmp_path / "ft"
    proc_dir.mkdir()
    run_entry(
        "run.py", "model=tiny", "device=cpu", "train.batch_size=4", "train.eval_iters=2", "train.max_iters=1",
        f"paths.data_dir={char_data}", f"init_from={source}", "init_from_checkpoint=latest", "model.n_layer=3",
        "name=ft", cwd=proc_dir,
    )  # fmt: skip
    run = proc_dir / "outputs" / "ft" / "latest"
    info = json.loads((run / "checkpoints" / "latest" / "info.json").read_text())
    assert info["init_from"]["checkpoint"] == str((source / "checkpoints" / "latest").resolve())
    assert info["model"]["n_layer"] == 2  # the run's, not the command line's
    log = (run / "run.log").read_text() if (run / "run.log").exists() else ""
    log += "".join(p.read_text() for p in run.glob("*.log"))
    assert "model.n_layer=3 is not used" in log


def test_bad_checkpoint_name_is_one_line(tmp_path, char_data, source):
    proc = run_entry(
        "run.py", "model=tiny", "device=cpu", f"paths.data_dir={char_data}", f"init_from={source}",
        "init_from_checkpoint=middle", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "init_from_checkpoint='middle': use best or latest" in one_line_error(proc, "init_from_checkpoint")


def test_the_data_must_speak_the_runs_tokenizer_or_its_chat_extension():
    from nanogpt.runs import _check_tokenizer_extends

    gpt2, chat = {"kind": "gpt2"}, {"kind": "gpt2", "chat": True}
    _check_tokenizer_extends(gpt2, {"tokenizer": gpt2, "vocab_size": 50257}, 50304, "run", "owt")
    _check_tokenizer_extends(gpt2, {"tokenizer": chat, "vocab_size": 50261}, 50304, "run", "chat")
    with pytest.raises(UserError, match="tokenized as .* but init_from=run was trained on"):
        char = {"kind": "char", "chars": "ab"}
        _check_tokenizer_extends(char, {"tokenizer": gpt2, "vocab_size": 50257}, 65, "run", "x")
    with pytest.raises(UserError, match="50261 token ids but init_from=run has only 50257 embeddings"):
        _check_tokenizer_extends(gpt2, {"tokenizer": chat, "vocab_size": 50261}, 50257, "run", "chat")
