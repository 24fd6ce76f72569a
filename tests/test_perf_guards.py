"""Start-up discipline: the training and sampling paths import only what they need.

transformers, datasets and wandb each cost about a second to import (`from transformers import GPT2LMHeadModel`
about five), tiktoken a few hundred ms: none may load on the CPU recipe's training path or when sampling a
character-level run. Checked with `python -X importtime`, which lists every module a process imports.
"""

from __future__ import annotations

import sys

from tests.helpers import REPO, TINY, run_command, run_dirs, run_entry

HEAVY = ("transformers", "datasets", "wandb", "tiktoken")


def imported(script: str, *args: str, cwd) -> set[str]:
    proc = run_command([sys.executable, "-X", "importtime", str(REPO / script), *args], cwd)
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_train_and_sample_paths_import_no_heavy_libraries(tmp_path, char_data):
    modules = imported("run.py", *TINY, f"paths.data_dir={char_data}", "train.max_iters=2", cwd=tmp_path)
    assert "torch" in modules and "hydra" in modules  # the listing works
    assert heavy(modules) == []
    [run] = run_dirs(tmp_path)
    assert heavy(imported("sample.py", f"run={run}", "max_new_tokens=2", "num_samples=1", cwd=tmp_path)) == []


def test_recipe_runs_in_bf16_where_the_cpu_has_bf16_dot_products(tmp_path, char_data):
    """dtype=auto picks bf16 autocast only on CPUs with bf16 dot products (AVX512-BF16, AMX, Arm BF16), else fp32."""
    from nanogpt.device import cpu_trains_faster_in_bf16

    args = ["experiment=shakespeare_char_cpu", f"paths.data_dir={char_data}", "train.max_iters=2", "device.dtype=auto"]
    args += ["train.eval_iters=1", "optim.warmup_iters=1", "optim.lr_decay_iters=2"]
    proc = run_entry("run.py", *args, cwd=tmp_path)
    expected = "bfloat16 on cpu" if cpu_trains_faster_in_bf16() else "float32 on cpu"
    assert expected in proc.stdout + proc.stderr
