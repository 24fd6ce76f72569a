"""Bad input gets one clear line and a non-zero exit, and loses nothing; faults never cost a run.

Each case of docs/RELIABILITY.md has a test here.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    OFFLINE_ENV,
    REPO,
    TINY,
    assert_same_weights,
    free_port,
    losses,
    one_line_error,
    popen_command,
    popen_entry,
    process_env,
    run_dirs,
    run_entry,
    status,
    torchrun_cmd,
    train,
    wait_for,
    weights,
)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (following the checkpoint links), to prove nothing was overwritten."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, char_data) -> Path:
    """A finished tiny run with checkpoints at iters 4 and 8 (copy it before changing it)."""
    base = tmp_path_factory.mktemp("trained")
    run_entry("run.py", *TINY, f"paths.data_dir={char_data}", "train.max_iters=8", "train.eval_interval=4", cwd=base)
    return run_dirs(base)[-1]


@pytest.fixture
def run_copy(tmp_path, trained) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst, symlinks=True)
    return dst


# ---- configuration ----


@pytest.mark.parametrize(
    "args, named",
    [
        (["model.foo=1"], "model.foo"),
        (["+model.foo=1"], "model.foo"),
        (["model=gtp2"], "model=gtp2"),
        (["train.batch_size=abc"], "train.batch_size"),
        (["optim.lr=["], "optim.lr: Value '['"),  # free text is quoted for Hydra (issue 14): a type error
        (["train.batch_size=0"], "train.batch_size=0"),
        (["model.block_size=0"], "model.block_size=0"),
        (["model.dropout=1.0"], "model.dropout=1.0"),
        (["optim.lr=-1"], "optim.lr=-1"),
        (["optim.warmup_iters=-1"], "optim.warmup_iters=-1"),
        (["optim.warmup_iters=10", "optim.lr_decay_iters=5"], "optim.lr_decay_iters=5"),
        (["train.eval_iters=0"], "train.eval_iters=0"),
        (["device.device=cuda"], "device.device=cuda"),
        (["device.device=mps"], "device.device=mps"),
        (["device.dtype=float16"], "device.dtype=float16"),
        (["device.device=tpu"], "device.device='tpu'"),
    ],
)
def test_bad_config_is_one_line(tmp_path, char_data, args, named):
    proc = run_entry("run.py", *TINY, f"paths.data_dir={char_data}", *args, cwd=tmp_path, check=False)
    one_line_error(proc, named)


def test_pretrained_model_limits(tmp_path, char_data, shakespeare):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)).save_pretrained(tmp_path / "hf")
    pretrained = [*TINY, f"init_from={tmp_path / 'hf'}"]
    # GPT-2's weights on character ids would train garbage: refused.
    proc = run_entry("run.py", *pretrained, f"paths.data_dir={char_data}", cwd=tmp_path, check=False)
    one_line_error(proc, "GPT-2's BPE", "'char'")
    # A block longer than the model's context.
    proc = run_entry(
        "run.py",
        *pretrained,
        f"paths.data_dir={tmp_path / 'data'}",
        "data=shakespeare",
        f"data.source={shakespeare}",
        "model.block_size=64",
        cwd=tmp_path,
        check=False,
    )
    one_line_error(proc, "model.block_size=64", "32")


# ---- data ----


@pytest.mark.parametrize("kind", ["missing", "empty", "latin1", "empty_dir", "binary_dir"])
def test_bad_source_is_one_line_and_writes_nothing(tmp_path, kind):
    src = tmp_path / "src.txt"
    if kind == "empty":
        src.write_text("")
    elif kind == "latin1":
        src.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    elif kind == "empty_dir":
        src.mkdir()
    elif kind == "binary_dir":
        src.mkdir()
        (src / "a.bin").write_bytes(bytes(range(256)))
    proc = run_entry(
        "prepare.py", f"data.source={src}", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path, check=False
    )
    one_line_error(proc, "src.txt")
    assert not (tmp_path / "data" / "shakespeare_char" / "meta.json").exists()
    assert not list((tmp_path / "data").rglob("*.bin")) if (tmp_path / "data").exists() else True


def copy_data(char_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(char_data / "shakespeare_char", root / "shakespeare_char")
    return root


@pytest.mark.parametrize("damage", ["truncated", "out_of_vocab", "corrupt_meta"])
def test_damaged_token_files_are_one_line(tmp_path, char_data, damage):
    root = copy_data(char_data, tmp_path)
    ds = root / "shakespeare_char"
    if damage == "truncated":
        with open(ds / "val.bin", "r+b") as f:
            f.truncate(1000)
    elif damage == "out_of_vocab":
        arr = np.memmap(ds / "val.bin", dtype=np.uint16, mode="r+")
        arr[500] = 9000
        arr.flush()
    else:
        (ds / "meta.json").write_text('{"vocab_size": 65, "dtype": "uint1')
    before = snapshot(ds)
    proc = run_entry("run.py", *TINY, f"paths.data_dir={root}", "data.source=/nonexistent", cwd=tmp_path, check=False)
    one_line_error(proc, {"truncated": "val.bin", "out_of_vocab": "9000", "corrupt_meta": "meta.json"}[damage])
    assert snapshot(ds) == before


def test_data_shorter_than_one_block(tmp_path):
    (tmp_path / "short.txt").write_text("to be or not to be, that is the question\n" * 3)
    proc = run_entry(
        "run.py",
        *TINY,
        f"paths.data_dir={tmp_path / 'data'}",
        f"data.source={tmp_path / 'short.txt'}",
        cwd=tmp_path,
        check=False,
    )
    one_line_error(proc, "val split", "model.block_size=32")


def test_model_vocab_smaller_than_data(tmp_path, char_data):
    proc = run_entry("run.py", *TINY, f"paths.data_dir={char_data}", "model.vocab_size=50", cwd=tmp_path, check=False)
    one_line_error(proc, "model.vocab_size=50", "65")


# ---- checkpoints and run dirs ----


def test_resume_without_checkpoint_or_run_dir(tmp_path, trained, run_copy):
    one_line_error(run_entry("run.py", f"resume={tmp_path}", cwd=tmp_path, check=False), "not a run dir")
    # A run killed before its first checkpoint (as a kill leaves it: its config, log and first metrics, no
    # checkpoints/ or status.json) starts again from the beginning, in its own dir, with its saved config.
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "status.json").unlink()
    first_lines = (run_copy / "metrics.jsonl").read_text().splitlines(keepends=True)[:3]
    (run_copy / "metrics.jsonl").write_text("".join(first_lines))
    proc = run_entry("run.py", f"resume={run_copy}", cwd=tmp_path)
    assert "has no checkpoint yet: starting the run from the beginning" in proc.stdout + proc.stderr
    assert status(run_copy)["status"] == "completed" and status(run_copy)["iter"] == 8
    assert losses(run_copy)[-len(losses(trained)) :] == losses(trained)
    assert_same_weights(weights(run_copy), weights(trained))
    assert not (tmp_path / "outputs").exists()  # no new run dir


@pytest.mark.parametrize(
    "entry, key",
    [
        ("sample.py", "run"),
        ("export.py", "run"),
        ("run.py", "resume"),
    ],
)
def test_missing_run_dir_is_called_that(tmp_path, entry, key):
    missing = tmp_path / "no-such-run"
    one_line_error(run_entry(entry, f"{key}={missing}", cwd=tmp_path, check=False), f"{missing}' does not exist")
    assert not missing.exists()


@pytest.mark.parametrize("damage", ["truncated_weights", "garbage_state", "missing_info"])
def test_corrupt_checkpoint_is_refused(tmp_path, run_copy, damage):
    ckpt = (run_copy / "checkpoints" / "latest").resolve()
    if damage == "truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "garbage_state":
        (ckpt / "trainer.pt").write_bytes(b"\x00garbage" * 100)
    else:
        (ckpt / "info.json").unlink()
    before = snapshot(run_copy)
    proc = run_entry("run.py", f"resume={run_copy}", "train.max_iters=12", cwd=tmp_path, check=False)
    one_line_error(proc, str(ckpt))
    kept = lambda files: {k: v for k, v in files.items() if k not in ("run.log", ".lock")}
    assert kept(snapshot(run_copy)) == kept(before)  # status.json and metrics.jsonl untouched too


def test_checkpoint_of_another_shape_is_refused(tmp_path, run_copy):
    proc = run_entry("run.py", f"resume={run_copy}", "model.n_layer=3", cwd=tmp_path, check=False)
    one_line_error(proc, "model.n_layer=3", "model.n_layer=2")


def test_pickle_with_code_is_refused_and_never_run(tmp_path, run_copy):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle
    import zipfile

    # A torch.save-style zip whose data.pkl runs a command when unpickled without weights_only.
    ckpt = (run_copy / "checkpoints" / "latest").resolve()
    with zipfile.ZipFile(ckpt / "trainer.pt", "w") as z:
        z.writestr("trainer/data.pkl", pickle.dumps({"iter": Exploit()}, protocol=2))
        z.writestr("trainer/version", "3\n")
    proc = run_entry("run.py", f"resume={run_copy}", "train.max_iters=12", cwd=tmp_path, check=False)
    one_line_error(proc, "refusing to load")
    assert not marker.exists()


def test_live_run_dir_is_locked_and_stale_lock_taken_over(tmp_path, run_copy):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from nanogpt.rundir import RunLock; RunLock({str(run_copy)!r}); "
            "print('held', flush=True); import time; time.sleep(120)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_entry("run.py", f"resume={run_copy}", "train.max_iters=10", cwd=tmp_path, check=False)
        one_line_error(proc, "in use by another live run", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # The holder died with its lock: the next run takes it over.
    run_entry("run.py", f"resume={run_copy}", "train.max_iters=10", cwd=tmp_path)
    assert status(run_copy)["iter"] == 10


# ---- sampling ----


@pytest.mark.parametrize(
    "args, named",
    [
        (["start='ROMEO\u2603'"], "'\u2603'"),
        (["start=FILE:nope.txt"], "nope.txt"),
        (["num_samples=0"], "num_samples=0"),
        (["max_new_tokens=0"], "max_new_tokens=0"),
        (["temperature=-0.5"], "temperature=-0.5"),
        (["top_k=0"], "top_k=0"),
        (["top_k=1000"], "top_k=1000"),
        (["top_p=0"], "top_p=0"),
        (["top_p=1.5"], "top_p=1.5"),
    ],
)
def test_bad_sampling_input_is_one_line(tmp_path, trained, args, named):
    one_line_error(run_entry("sample.py", f"run={trained}", *args, cwd=tmp_path, check=False), named)


def test_greedy_sampling_with_temperature_zero(tmp_path, trained):
    outs = [
        run_entry(
            "sample.py",
            f"run={trained}",
            "temperature=0",
            "max_new_tokens=20",
            "num_samples=2",
            f"seed={s}",
            cwd=tmp_path,
        ).stdout
        for s in (1, 2)
    ]
    assert outs[0] == outs[1]


# ---- logging ----


def test_wandb_without_key_or_network_goes_offline(tmp_path, char_data):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update({k: v for k, v in OFFLINE_ENV.items() if k != "WANDB_MODE"}, HOME=str(tmp_path), WANDB_DIR=str(tmp_path))
    # `script` gives the run a terminal on stdin: where wandb would otherwise sit at its login prompt.
    cmd = [
        sys.executable,
        str(REPO / "run.py"),
        *TINY,
        f"paths.data_dir={char_data}",
        "logger=wandb",
        "train.max_iters=3",
    ]
    proc = subprocess.run(
        ["script", "-qec", " ".join(cmd), "/dev/null"] if shutil.which("script") else cmd,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "logging offline" in proc.stdout + proc.stderr
    [run] = run_dirs(tmp_path)
    assert status(run)["status"] == "completed"
    assert list((run / "wandb").glob("offline-run-*"))


# ---- faults ----


def newest_run(base: Path) -> Path | None:
    """The newest run dir under `base` while a run may be starting (Hydra makes outputs/ before outputs/default/)."""
    runs = run_dirs(base) if (base / "outputs" / "default").is_dir() else []
    return runs[-1] if runs else None


def newest_metrics(base: Path) -> list[str]:
    """The lines of the newest run's metrics.jsonl under `base` as they are now ([] before there are any)."""
    run = newest_run(base)
    path = run / "metrics.jsonl" if run else None
    return path.read_text().splitlines() if path is not None and path.exists() else []


def last_iter(base: Path) -> int:
    lines = newest_metrics(base)
    return json.loads(lines[-1])["iter"] if lines else -1


def wait_for_progress(base: Path, beyond: int) -> None:
    """Until the newest run under `base` has logged an iter past `beyond` + 1."""
    wait_for("the run to make progress", lambda: last_iter(base) > beyond + 1, timeout=120, poll=0.05)


def wait_for_lines(base: Path, lines: int, proc: subprocess.Popen) -> None:
    """Until the newest run under `base` has `lines` lines of metrics, or `proc` has ended."""
    wait_for(
        "the run to make progress",
        lambda: len(newest_metrics(base)) >= lines or proc.poll() is not None,
        120,
        poll=0.01,
    )


def test_sigint_and_sigterm_save_and_resume_exactly(tmp_path, char_data):
    args = ["train.max_iters=60", "train.eval_interval=20", "model.dropout=0.1"]
    straight = train(tmp_path / "straight", char_data, *args)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        if sig == signal.SIGINT:
            proc = popen_entry("run.py", *TINY, f"paths.data_dir={char_data}", *args, cwd=stopped)
        else:
            [run] = run_dirs(stopped)
            proc = popen_entry("run.py", f"resume={run}", cwd=stopped)
        wait_for_progress(stopped, beyond=0 if sig == signal.SIGINT else last_iter(stopped))
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err
        [run] = run_dirs(stopped)
        assert status(run)["status"] == "interrupted"
        assert "checkpoint saved" in out + err
    run_entry("run.py", f"resume={run}", cwd=stopped)
    assert_same_weights(weights(straight), weights(run))


def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path, char_data):
    args = ["train.max_iters=100", "train.eval_interval=2", "train.always_save_checkpoint=true", "model.dropout=0.1"]
    straight = train(tmp_path / "straight", char_data, *args)
    work = tmp_path / "killed"
    work.mkdir()
    rng = random.Random(0)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start() -> subprocess.Popen:
        run = newest_run(work)
        if run and (run / "checkpoints" / "latest").exists():
            return popen_entry("run.py", f"resume={run}", cwd=work, **quiet)
        shutil.rmtree(work / "outputs", ignore_errors=True)  # killed before its first checkpoint: start over
        return popen_entry("run.py", *TINY, f"paths.data_dir={char_data}", *args, cwd=work, **quiet)

    proc = start()
    for _ in range(10):
        # Let it make a little progress, then kill it at a random moment: mid-step, mid-eval or mid-save.
        wait_for_lines(work, len(newest_metrics(work)) + rng.randint(1, 3), proc)
        time.sleep(rng.uniform(0.0, 0.05))
        assert proc.poll() is None, "the run finished before 10 kills: raise train.max_iters"
        proc.kill()
        proc.wait()
        proc = start()
    assert proc.wait(timeout=600) == 0
    [run] = run_dirs(work)
    assert_same_weights(weights(straight), weights(run))
    assert losses(straight)[-1] == losses(run)[-1]


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, run_copy):
    """SIGKILL while a checkpoint is half written: `latest` still names the previous, complete one."""
    script = f"""
import sys, time, safetensors.torch as st
from nanogpt import checkpoint
from nanogpt.model import GPT
from nanogpt.config import ModelConfig
orig = st.save_model
def slow(model, path, *a, **k):
    orig(model, path, *a, **k)
    with open(path, "r+b") as f:
        f.truncate(100)  # as if the process died mid-write
    print("writing", flush=True)
    time.sleep(60)
checkpoint.save_model = slow
info = checkpoint.load_info(checkpoint.find({str(run_copy)!r}))
model = GPT(ModelConfig(**info["model"]))
checkpoint.save({str(run_copy)!r}, model, {{"iter": 99}}, {{**info, "iter": 99}})
"""
    before = snapshot(run_copy / "checkpoints")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    after = {k: v for k, v in snapshot(run_copy / "checkpoints").items() if ".tmp-" not in k}
    assert after == before
    run_entry("run.py", f"resume={run_copy}", "train.max_iters=10", cwd=tmp_path)  # loads, resumes, cleans up
    assert not [p for p in (run_copy / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_write_error_while_saving_keeps_previous(tmp_path, run_copy):
    """A disk that fills up (here: a file size limit) fails the save with one line; the old checkpoint stays."""
    before = snapshot(run_copy / "checkpoints")
    size = (run_copy / "checkpoints" / "latest" / "model.safetensors").stat().st_size

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG rather than kill the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), f"resume={run_copy}", "train.max_iters=12"],
        cwd=tmp_path,
        env=process_env(),
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=300,
    )
    one_line_error(proc, "could not write a checkpoint", "previous checkpoint is intact")
    after = {k: v for k, v in snapshot(run_copy / "checkpoints").items() if ".tmp-" not in k}
    assert after == before


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, char_data):
    run = train(tmp_path / "a", char_data, "train.max_iters=4", "train.eval_interval=4")
    before = snapshot(run / "checkpoints")
    proc = run_entry(
        "run.py", f"resume={run}", "train.max_iters=20", "optim.lr=1e12", "optim.grad_clip=0", cwd=tmp_path, check=False
    )
    line = one_line_error(proc, "loss is nan at iter")
    assert int(line.split("at iter ")[1].split(":")[0]) >= 4
    assert snapshot(run / "checkpoints") == before
    # Opting in to skipping: the run goes on past the bad steps and finishes.
    proc = run_entry(
        "run.py",
        f"resume={run}",
        "train.max_iters=8",
        "optim.lr=1e12",
        "optim.grad_clip=0",
        "train.skip_nonfinite=true",
        cwd=tmp_path,
    )
    assert "skipping this step" in proc.stderr + proc.stdout


def test_ddp_rank_failure_brings_the_others_down(tmp_path, char_data):
    """Two torchrun "nodes": node 1 finds its token files damaged after the group is up and exits; node 0 must
    fail promptly instead of waiting in a collective forever."""
    bad = copy_data(char_data, tmp_path)
    with open(bad / "shakespeare_char" / "val.bin", "r+b") as f:
        f.truncate(100)
    port = free_port()
    procs = []
    for node, data in ((0, char_data), (1, bad)):
        args = [
            *TINY,
            f"paths.data_dir={data}",
            "train.max_iters=200",
            "train.grad_accum=2",
            "data.source=/nonexistent",
        ]
        (tmp_path / f"node{node}").mkdir()
        env = process_env(NANOGPT_DIST_TIMEOUT="60")
        procs.append(popen_command(torchrun_cmd(*args, port=port, nproc=1, node=node), tmp_path / f"node{node}", env))
    started = time.time()
    codes = [p.wait(timeout=240) for p in procs]
    assert all(c != 0 for c in codes), codes
    assert time.time() - started < 200
    for p in procs:
        p.communicate()
