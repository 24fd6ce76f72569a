"""The GPU benchmark cannot run for real on a CPU-only CI machine; its --smoke mode runs the same machinery (random
OpenWebText-shaped data, microbatch fallback, run.py, metrics, the shakespeare_char recipe) on a tiny CPU model so
that it is ready the day a GPU is lent."""

from __future__ import annotations

import json
import re

from tests.helpers import run_command, run_entry


def test_gpu_benchmark_smoke_run(tmp_path, shakespeare):
    args = ["--smoke", "--microbatches", "4", "--iters", "4", "--shakespeare", str(shakespeare)]
    proc = run_entry("benchmarks/gpu_mfu.py", *args, cwd=tmp_path)
    line = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"gpu_mfu: CPU \(smoke run, not a figure\), tiny model.*: microbatch 4 x 2: [\d,]+ tokens/s", line)
    assert re.search(r"shakespeare_char: \d+ s, best val \d\.\d{4}$", line)


def test_gpu_benchmark_says_it_needs_a_gpu(tmp_path):
    proc = run_entry("benchmarks/gpu_mfu.py", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "needs a CUDA GPU" in proc.stderr


FAKE_TRAIN = """\
import json, sys
with open({record!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
n = int(dict(a[2:].split("=", 1) for a in sys.argv[2:])["max_iters"])
print("step 0: train loss 4.1000, val loss 4.2000")
for i in range(n + 1):
    print(f"iter {{i}}: loss 3.0000, time {{20 + i}}.00ms, mfu -100.00%")
    if i == n - 1:
        print(f"step {{n}}: train loss 1.8000, val loss 1.8500")
"""
FAKE_PREPARE = """\
import os
import numpy as np
here = os.path.dirname(__file__)
text = open(os.path.join(here, "input.txt")).read()
index = {c: i for i, c in enumerate(sorted(set(text)))}
ids = np.array([index[c] for c in text], dtype=np.uint16)
cut = int(len(ids) * 0.9)
ids[:cut].tofile(os.path.join(here, "train.bin"))
ids[cut:].tofile(os.path.join(here, "val.bin"))
"""


def test_vs_nanogpt_runs_the_checkout_and_ours_alternately(tmp_path, shakespeare):
    """The side-by-side benchmark against a stand-in for nanoGPT's checkout (a git dir, as a clone leaves it): the
    stand-in is run with the README's CPU recipe, prepares the same tokens as ours, and is never written to."""
    fake, record = tmp_path / "nanoGPT", tmp_path / "argv.jsonl"
    (fake / "config").mkdir(parents=True)
    (fake / "data" / "shakespeare_char").mkdir(parents=True)
    (fake / "train.py").write_text(FAKE_TRAIN.format(record=str(record)))
    (fake / "config" / "train_shakespeare_char.py").write_text("out_dir = 'out-shakespeare-char'\n")
    (fake / "data" / "shakespeare_char" / "prepare.py").write_text(FAKE_PREPARE)
    for git in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        run_command(["git", *git], cwd=fake)
    args = ["--nanogpt", str(fake / ".git"), "--corpus", str(shakespeare), "--rounds", "1", "--iters", "12"]
    proc = run_entry("benchmarks/vs_nanogpt.py", *args, "--target", "3.5", "train.eval_iters=2", cwd=tmp_path)
    line = proc.stdout.strip().splitlines()[-1]
    wall = re.search(r"wall ours ([\d.]+) s vs ([\d.]+) s = ([\d.]+)x", line)
    assert wall and float(wall[3]) > 3, line  # ours / theirs: a real run against a stand-in that only prints
    assert "ms/iter" in line and re.search(r"val ours \d\.\d{4} at 12 vs 1\.8500 at 12", line), line
    assert re.search(r"ours reaches 3.5 at [\d.]+ s = [\d.]+x nanoGPT's whole run", line), line
    assert "same tokens: yes" in line and "threads default" in line, line
    [argv] = [json.loads(x) for x in record.read_text().splitlines()]
    assert argv[0] == "config/train_shakespeare_char.py" and "--device=cpu" in argv and "--compile=False" in argv
    assert {"--eval_iters=20", "--block_size=64", "--n_embd=128", "--max_iters=12", "--lr_decay_iters=12"} <= set(argv)
    assert not (fake / "data" / "shakespeare_char" / "input.txt").exists()  # the checkout itself is untouched
