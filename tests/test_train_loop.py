"""What the loop says and when it stops: log lines every train.log_interval with metrics.jsonl keeping every step, a
progress bar on a terminal only, a completed run resumed, a stop asked during a long evaluation, a damaged saved
config. All through `python run.py` in subprocesses."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import (
    TINY,
    assert_same_weights,
    losses,
    metrics,
    one_line_error,
    popen_entry,
    process_env,
    run_dirs,
    run_entry,
    status,
    train,
    wait_for,
    weights,
)

STEP_LINE = re.compile(r"iter (\d+): loss [\d.]+, [\d.]+ ms/iter")


@pytest.fixture(scope="module")
def logged(tmp_path_factory, char_data) -> tuple[Path, str]:
    """A finished run of 7 steps logging every 3rd, and what it printed (stdout and stderr are pipes, not a tty)."""
    base = tmp_path_factory.mktemp("logged")
    args = [*TINY, f"paths.data_dir={char_data}", "train.max_iters=7", "train.eval_interval=7", "train.log_interval=3"]
    proc = run_entry("run.py", *args, cwd=base)
    return run_dirs(base)[-1], proc.stdout + proc.stderr


def test_log_lines_every_log_interval_and_metrics_every_step(logged):
    run, out = logged
    assert [int(i) for i in STEP_LINE.findall(out)] == [0, 3, 6]  # the last step is always logged
    steps = [r for r in metrics(run) if "loss" in r]
    assert [r["iter"] for r in steps] == list(range(7))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in steps)
    assert [r["iter"] for r in metrics(run) if "val_loss" in r] == [0, 7]
    assert "\r" not in out and "it/s" not in out  # no progress bar when stderr is not a terminal


def test_progress_bar_on_a_terminal(tmp_path, char_data):
    """stderr a pty: tqdm's bar with the loss, ms/iter and tokens/s, and the log lines still printed."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from tests.helpers import REPO

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # tqdm sizes its bar to it
    args = [*TINY, f"paths.data_dir={char_data}", "train.max_iters=6", "train.eval_interval=6", "train.log_interval=2"]
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=tmp_path,
        env=process_env(),
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    os.close(leader)
    shown = b"".join(chunks).decode(errors="replace")
    assert re.search(r"\d+/6 \[", shown), shown[-2000:]  # the bar: steps done of the run's 6, then the times
    assert re.search(r"loss \d\.\d{4}, [\d.]+ ms/iter, [\d,]+ tokens/s", shown), shown[-2000:]
    [run] = run_dirs(tmp_path)
    assert [r["iter"] for r in metrics(run) if "loss" in r] == list(range(6))


def test_resuming_a_completed_run_says_so_and_how_to_go_on(tmp_path, logged):
    run = tmp_path / "run"
    shutil.copytree(logged[0], run, symlinks=True)
    before = (run / "metrics.jsonl").read_text()
    proc = run_entry("run.py", f"resume={run}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    [line] = [x for x in out.splitlines() if "already complete" in x]
    assert "at iter 7" in line and f"python run.py resume={run} train.max_iters=<more than 7>" in line, line
    assert (run / "metrics.jsonl").read_text() == before and status(run)["iter"] == 7
    # What it says works: the run trains on to the new end.
    run_entry("run.py", f"resume={run}", "train.max_iters=9", cwd=tmp_path)
    assert status(run)["status"] == "completed" and status(run)["iter"] == 9


def test_resume_with_damaged_saved_config_is_one_line(tmp_path, logged):
    run = tmp_path / "run"
    shutil.copytree(logged[0], run, symlinks=True)
    saved = run / ".hydra" / "config.yaml"
    saved.write_text("model:\n  n_layer: [2\ntrain: {max_iters: 7\n")
    proc = run_entry("run.py", f"resume={run}", cwd=tmp_path, check=False)
    one_line_error(proc, str(saved), "is not valid YAML")
    assert saved.read_text() == "model:\n  n_layer: [2\ntrain: {max_iters: 7\n"


def test_ctrl_c_during_a_long_evaluation_stops_within_a_batch_and_resumes_exactly(tmp_path, char_data):
    """A run resumed to 20 steps with an evaluation that would take minutes (100,000 batches a split) gets SIGINT
    during its evaluation at iter 15: it exits as interrupted within seconds, with the steps before the evaluation
    checkpointed and nothing of the evaluation recorded. Resumed (with a short evaluation), it ends as a run never
    interrupted, bit for bit."""
    common = ["train.eval_interval=5", "optim.lr_decay_iters=20", "model.dropout=0.1"]
    straight = train(tmp_path / "straight", char_data, "train.max_iters=20", *common)
    run = train(tmp_path / "stopped", char_data, "train.max_iters=10", *common)
    proc = popen_entry("run.py", f"resume={run}", "train.max_iters=20", "train.eval_iters=100000", cwd=tmp_path)
    wait_for("step 14", lambda: any(r.get("iter") == 14 and "loss" in r for r in metrics(run)), 120, proc, 0.05)
    time.sleep(1.0)  # well into the evaluation at iter 15
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err[-3000:]
    assert took < 10, f"took {took:.1f} s to stop"
    assert status(run)["status"] == "interrupted" and "stopped at iter 15: checkpoint saved" in out + err
    assert not [r for r in metrics(run) if r["iter"] == 15]  # the evaluation cut short left no record
    run_entry("run.py", f"resume={run}", "train.max_iters=20", "train.eval_iters=2", cwd=tmp_path)
    assert losses(run) == losses(straight)
    assert_same_weights(weights(run), weights(straight))
