"""Start-up discipline: the training and sampling paths import only what they need.

transformers, datasets, wandb and lm-eval each cost about a second to import (`from transformers import
GPT2LMHeadModel` about five), tiktoken and tokenizers a few hundred ms: none may load on the CPU recipe's training
path or when sampling a character-level run. Nor may our own modules for other jobs (sweep reports, pretrained
GPT-2, BPE, downstream tasks, Hugging Face data), each imported only inside the function that needs it; and sampling
never loads torch._dynamo (about a second: only torch.optim's optimizers pull it in) or the training and data
modules. Checked on the modules a process holds at its exit (sys.modules: `python -X importtime` misses what
`importlib.import_module` loads, as Hydra does for callbacks). And torch is imported with Python's garbage
collector paused, then frozen out of its reach (nanogpt.cli.startup.importing_torch): its full collections over torch's
objects cost ~0.4 s of start-up and ~0.8 s at exit.
"""

from __future__ import annotations

import gc
import json
import sys

from tests.helpers import REPO, run_command, run_dirs, run_entry

HEAVY = ("transformers", "datasets", "wandb", "tiktoken", "lm_eval", "tokenizers", "matplotlib")
# Ours, for other jobs than training the character recipe.
NOT_FOR_TRAINING = (
    "nanogpt.sweeps.isoflop",
    "nanogpt.pretrained",
    "nanogpt.bpe",
    "nanogpt.eval.hellaswag",
    "nanogpt.eval.harness",
    "nanogpt.eval.command",
    "nanogpt.data.documents",
    "nanogpt.data.hf_datasets",
    "nanogpt.data.stream",
    "nanogpt.data.pretokenized",
)
NOT_FOR_SAMPLING = (*NOT_FOR_TRAINING, "torch._dynamo", "nanogpt.train", "nanogpt.optim", "nanogpt.data.prepare")

# Runs a script as `python <script> args...` does (its folder first on sys.path); at exit, writes the modules it
# holds, how many objects are frozen out of the garbage collector's reach, and whether the collector is on.
_LIST_MODULES = """\
import atexit, gc, json, os, runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
state = lambda: {"modules": sorted(sys.modules), "frozen": gc.get_freeze_count(), "gc": gc.isenabled()}
atexit.register(lambda: open(out, "w").write(json.dumps(state())))
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def imported(script: str, *args: str, cwd) -> set[str]:
    """The modules `script` held at its exit; also checks that its torch import was frozen (see the docstring)."""
    out = cwd / f"{script}.modules"
    run_command([sys.executable, "-c", _LIST_MODULES, str(out), str(REPO / script), *args], cwd)
    state = json.loads(out.read_text())
    # torch alone is over 100k objects; had anything imported it before the pause, nothing would be frozen
    assert state["frozen"] > 100_000 and state["gc"], state["frozen"]
    return set(state["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """The modules (or packages, with their submodules) among `names` that were loaded."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_train_and_sample_paths_import_only_what_they_need(tmp_path, char_data):
    args = ["experiment=shakespeare_char_cpu", f"paths.data_dir={char_data}", "train.max_iters=2"]
    args += ["train.eval_iters=1", "optim.warmup_iters=1", "optim.lr_decay_iters=2"]
    modules = imported("run.py", *args, cwd=tmp_path)
    assert {"torch", "hydra", "nanogpt.train", "nanogpt.sweeps"} <= modules  # the listing works
    assert loaded(modules, HEAVY + NOT_FOR_TRAINING) == []
    [run] = run_dirs(tmp_path, "shakespeare_char_cpu")
    modules = imported("sample.py", f"run={run}", "max_new_tokens=2", "num_samples=1", cwd=tmp_path)
    assert {"torch", "hydra", "nanogpt.sampling"} <= modules
    assert loaded(modules, HEAVY + NOT_FOR_SAMPLING) == []


def test_torch_import_pause_leaves_a_process_that_has_torch_alone():
    """A library user's process (this one) already holds torch: nothing of theirs is frozen, the collector stays on."""
    import torch  # noqa: F401

    from nanogpt.cli.startup import importing_torch

    before = gc.get_freeze_count()
    with importing_torch():
        assert gc.isenabled()
    assert gc.get_freeze_count() == before and gc.isenabled()


def test_recipe_runs_in_bf16_where_the_cpu_has_bf16_dot_products(tmp_path, char_data):
    """dtype=auto picks bf16 autocast only on CPUs with bf16 dot products (AVX512-BF16, AMX, Arm BF16), else fp32."""
    from nanogpt.device import cpu_trains_faster_in_bf16

    args = ["experiment=shakespeare_char_cpu", f"paths.data_dir={char_data}", "train.max_iters=2", "device.dtype=auto"]
    args += ["train.eval_iters=1", "optim.warmup_iters=1", "optim.lr_decay_iters=2"]
    proc = run_entry("run.py", *args, cwd=tmp_path)
    expected = "bfloat16 on cpu" if cpu_trains_faster_in_bf16() else "float32 on cpu"
    assert expected in proc.stdout + proc.stderr
