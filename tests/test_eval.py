"""Downstream evaluation: our HellaSwag against an independent computation, the harness adapter against the
harness's own Hugging Face model, in the training loop (sharded over two processes; compiled: test_train.py),
eval.py end to end, and its refusals."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import OFFLINE_ENV, REPO, TINY, free_port, one_line_error, run_dirs, run_entry, write_harness_tasks

WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "dog", "ran", "far", "away", "quickly", "then"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tasks(folder: Path) -> dict[str, Path]:
    """Harness task YAMLs over a local JSON file: one of each request type, and a generation longer than a block."""
    rng = random.Random(1)
    docs = []
    for i in range(8):
        q = sentence(rng, 50 if i == 0 else rng.randint(3, 10))  # the first overflows a 48-token block
        choices = [sentence(rng, rng.randint(1, 4)) for _ in range(3)]
        docs.append({"question": q, "choices": choices, "label": i % 3, "text": f"{q}. {q}."})
    bodies = {
        "toy_mc": 'output_type: multiple_choice\ndoc_to_text: "{{question}} Answer:"\ndoc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "toy_roll": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n",
        "toy_gen": 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{choices[0]}}"\n'
        'generation_kwargs:\n  until: ["."]\n  max_gen_toks: 8\nmetric_list:\n  - metric: exact_match\n',
    }
    bodies["toy_long_gen"] = bodies["toy_gen"].replace("max_gen_toks: 8", "max_gen_toks: 64")
    return write_harness_tasks(folder, docs, bodies)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    """A random tiny GPT-2 as a Hugging Face folder, with GPT-2's tokenizer built from the offline BPE files."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from nanogpt.tokenizer import gpt2_bpe_files

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    torch.manual_seed(0)
    # A wide init so that the random model prefers some endings clearly: scores that are not all ties.
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=48, initializer_range=0.2)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    files = gpt2_bpe_files()
    shutil.copyfile(files["encoder.json"], folder / "vocab.json")
    shutil.copyfile(files["vocab.bpe"], folder / "merges.txt")
    GPT2TokenizerFast.from_pretrained(str(folder), model_max_length=48).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, char_data, hellaswag_file) -> Path:
    """A tiny character-level run that scored HellaSwag in training at iters 0, 4 and 8 (compiled: test_train.py)."""
    base = tmp_path_factory.mktemp("eval_run")
    run_entry(
        "run.py",
        *TINY,
        f"paths.data_dir={char_data}",
        "train.max_iters=8",
        "train.eval_interval=4",
        "train.eval_tasks=[hellaswag]",
        f"eval.hellaswag_file={hellaswag_file}",
        cwd=base,
    )
    return run_dirs(base)[-1]


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- fidelity ----


def test_hellaswag_scores_equal_an_independent_gpt2_computation(tiny_hf, hellaswag_file):
    """Example by example: the summed and per-token losses of each ending, computed one sequence at a time by
    transformers' GPT2LMHeadModel, pick the same endings as our batched, padded, cropped scorer."""
    from transformers import GPT2LMHeadModel

    from nanogpt.distributed import Dist
    from nanogpt.eval import hellaswag
    from nanogpt.eval.scoring import Scorer
    from nanogpt.pretrained import from_huggingface
    from nanogpt.tokenizer import GPT2Tokenizer

    examples = hellaswag.parse(hellaswag_file.read_bytes(), str(hellaswag_file))
    hf = GPT2LMHeadModel.from_pretrained(str(tiny_hf)).eval()
    enc = GPT2Tokenizer()
    reference = []
    for ex in examples:
        losses, counts = [], []
        for ending in ex.endings:
            ctx, end = enc.encode(ex.ctx), enc.encode(" " + ending)
            tokens = torch.tensor((ctx + end)[-49:])  # the last block + 1 tokens
            with torch.no_grad():
                logp = hf(tokens[None, :-1]).logits[0].log_softmax(-1)
            n = min(len(end), len(tokens) - 1)
            picked = logp[-n:].gather(1, tokens[-n:, None])
            losses.append(-picked.sum().item())
            counts.append(n)
        reference.append((losses, counts))

    model = from_huggingface(str(tiny_hf))
    scorer = Scorer(model, enc, 48, 50257, torch.device("cpu"), batch_size=12, dist=Dist())  # 3 examples a forward
    ours = hellaswag.score_each(scorer, examples)
    for (losses, counts), s in zip(reference, ours, strict=True):
        assert s.tokens == counts
        assert max(abs(a - b) for a, b in zip(losses, s.losses, strict=True)) < 1e-4
        assert s.pred == min(range(4), key=lambda i: losses[i])
        assert s.pred_norm == min(range(4), key=lambda i: losses[i] / counts[i])
    assert ours[0].cropped and not any(s.cropped for s in ours[1:])
    assert len({s.pred for s in ours}) > 1 and len({s.pred_norm for s in ours}) > 1  # not one answer for all

    result = hellaswag.score(scorer, examples)
    right = sum(s.pred == ex.label for s, ex in zip(ours, examples, strict=True))
    right_norm = sum(s.pred_norm == ex.label for s, ex in zip(ours, examples, strict=True))
    assert result.metrics == {"acc": right / 12, "acc_norm": right_norm / 12}
    assert result.examples == 12 and result.details["cropped"] == 1


def test_harness_adapter_equals_the_harness_hf_model(tiny_hf, tmp_path):
    """Log-likelihoods (to 1e-4) and greedy generations equal lm-eval's own HFLM on the same weights, over the
    requests of a local multiple-choice, rolling-perplexity and generation task, with left crops in each."""
    pytest.importorskip("lm_eval", reason='the harness adapter needs pip install -e ".[eval]"')
    pytest.importorskip("accelerate", reason="lm-eval's HFLM needs accelerate (in the dev extra)")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from nanogpt.eval.harness import NanoGPTLM
    from nanogpt.eval.scoring import Scorer
    from nanogpt.pretrained import from_huggingface
    from nanogpt.tokenizer import GPT2Tokenizer

    tasks = write_tasks(tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    loaded = manager.load([str(tasks[n]) for n in ("toy_mc", "toy_roll", "toy_gen")])["tasks"]
    theirs = HFLM(pretrained=str(tiny_hf), device="cpu", dtype="float32", batch_size=3)
    ours = NanoGPTLM(
        Scorer(from_huggingface(str(tiny_hf)), GPT2Tokenizer(), 48, 50257, torch.device("cpu"), batch_size=5)
    )
    for task in loaded.values():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        kind = task.instances[0].request_type
        a, b = getattr(theirs, kind)(task.instances), getattr(ours, kind)(task.instances)
        if kind == "loglikelihood":
            assert all(abs(x[0] - y[0]) < 1e-4 and x[1] == y[1] for x, y in zip(a, b, strict=True)), (a, b)
        elif kind == "loglikelihood_rolling":
            assert all(abs(x - y) < 1e-4 for x, y in zip(a, b, strict=True)), (a, b)
        else:
            assert a == b and any(a), (a, b)


# ---- in the training loop, and eval.py ----


def text_of(example: dict) -> list[str]:
    """What HellaSwag encodes of an example: its context once, each ending after a space."""
    return [example["ctx"]] + [" " + e for e in example["endings"]]


def test_in_loop_hellaswag_equals_eval_py(eval_run, hellaswag_file, tmp_path):
    """The run logged HellaSwag at each evaluation; eval.py on its latest checkpoint gets the same numbers, prints
    them, and adds only eval/latest.json to the run dir."""
    records = [json.loads(line) for line in (eval_run / "metrics.jsonl").read_text().splitlines()]
    scored = {r["iter"]: r for r in records if "hellaswag_acc" in r}
    assert sorted(scored) == [0, 4, 8] and all("val_loss" in r and r["eval_tasks_s"] > 0 for r in scored.values())
    assert "hellaswag acc" in (eval_run / "run.log").read_text()

    before = files_of(eval_run)
    proc = run_entry("eval.py", f"run={eval_run}", "tasks=[hellaswag]", "checkpoint=latest", cwd=tmp_path)
    assert "hellaswag" in proc.stdout and "acc_norm" in proc.stdout
    after = files_of(eval_run)
    assert set(after) - set(before) == {"eval/latest.json"} and all(after[k] == before[k] for k in before)
    report = json.loads(after["eval/latest.json"])
    hs = report["tasks"]["hellaswag"]
    assert hs["metrics"] == {"acc": scored[8]["hellaswag_acc"], "acc_norm": scored[8]["hellaswag_acc_norm"]}
    assert report["model"]["iter"] == 8 and hs["examples"] == 12 and hs["cropped"] > 0  # 32 characters hold little
    chars = set(json.loads((eval_run / "checkpoints" / "latest" / "info.json").read_text())["tokenizer"]["chars"])
    texts = [t for line in hellaswag_file.read_text().splitlines() for t in text_of(json.loads(line))]
    assert hs["dropped_chars"] == sum(c not in chars for t in texts for c in t) == 3  # "[title] Step 2."'s [, ], 2
    assert report["command"].startswith("python eval.py run=") and hs["version"]


def test_eval_py_runs_harness_tasks_on_a_character_model(eval_run, tmp_path):
    """A character-level model, which no export can take to the harness, runs its three request types."""
    pytest.importorskip("lm_eval", reason='harness=[...] needs pip install -e ".[eval]"')
    tasks = write_tasks(tmp_path)
    names = ",".join(str(tasks[n]) for n in ("toy_mc", "toy_roll", "toy_gen"))
    out = tmp_path / "results.json"
    proc = run_entry("eval.py", f"run={eval_run}", f"harness=[{names}]", "limit=4", f"out={out}", cwd=tmp_path)
    report = json.loads(out.read_text())["harness"]
    assert set(report) == {"toy_mc", "toy_roll", "toy_gen"} and all(r["examples"] == 4 for r in report.values())
    assert 0 <= report["toy_mc"]["metrics"]["acc"] <= 1 and report["toy_roll"]["metrics"]["word_perplexity"] > 1
    assert "toy_mc (harness)" in proc.stdout and not (eval_run / "eval" / "best.json").exists()


def test_in_loop_hellaswag_sharded_over_two_fsdp_processes(tmp_path, char_data, hellaswag_file):
    """Two FSDP processes score 5 examples (3 and 2: one runs a padding forward) and agree with one process."""
    common = [
        *TINY,
        f"paths.data_dir={char_data}",
        "train.max_iters=2",
        "train.eval_interval=2",
        "train.eval_tasks=[hellaswag]",
        "train.eval_tasks_limit=5",
        f"eval.hellaswag_file={hellaswag_file}",
        "eval.batch_size=4",
    ]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        str(REPO / "run.py"),
        *common,
        "train.parallel=fsdp",
        "train.grad_accum=2",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = run_dirs(tmp_path)
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "hellaswag_acc" in line]
    # One process on the saved weights (what eval.py does, here in-process to save a start-up).
    from nanogpt.config import SampleConfig, TasksConfig
    from nanogpt.distributed import Dist
    from nanogpt.eval import hellaswag
    from nanogpt.eval.scoring import Scorer
    from nanogpt.sampling import load_for_sampling

    model, tokenizer, vocab = load_for_sampling(SampleConfig(run=str(run), checkpoint="latest"))
    examples = hellaswag.load(TasksConfig(hellaswag_file=str(hellaswag_file)), "unused", 5, Dist())
    one = hellaswag.score(Scorer(model, tokenizer, 32, vocab, torch.device("cpu"), batch_size=4), examples)
    assert (last[-1]["hellaswag_acc"], last[-1]["hellaswag_acc_norm"]) == (one.metrics["acc"], one.metrics["acc_norm"])
    assert one.examples == 5


# ---- download and refusals ----


def test_download_from_a_file_url_is_checked_and_atomic(tmp_path, hellaswag_file, monkeypatch):
    from nanogpt.config import TasksConfig
    from nanogpt.distributed import Dist
    from nanogpt.errors import UserError
    from nanogpt.eval import hellaswag

    data = str(tmp_path / "data")
    cached = Path(hellaswag.default_file(data))
    monkeypatch.setattr(hellaswag, "URL", hellaswag_file.as_uri())
    monkeypatch.setattr(hellaswag, "N_VAL", 13)  # the download must hold all the examples it should
    with pytest.raises(UserError, match="gave 12 examples, not 13: the download was cut short"):
        hellaswag.load(TasksConfig(), data, None, Dist())
    assert not cached.exists()
    monkeypatch.setattr(hellaswag, "N_VAL", 12)
    examples = hellaswag.load(TasksConfig(), data, 5, Dist())  # downloaded once into the data dir
    assert len(examples) == 5 and cached.read_bytes() == hellaswag_file.read_bytes()
    monkeypatch.setattr(hellaswag, "URL", "file:///nonexistent/hellaswag_val.jsonl")
    assert len(hellaswag.load(TasksConfig(), data, None, Dist())) == 12  # from the cache: no download

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n')
    for url, needle in ((bad.as_uri(), "bad.jsonl:1 is not a HellaSwag example"), ("file:///nonexistent", "cannot")):
        dest = tmp_path / "other" / "hellaswag_val.jsonl"
        with pytest.raises(UserError, match=needle):
            hellaswag.download(url, str(dest))
        assert not dest.parent.exists() or not any(dest.parent.iterdir())  # nothing half-written
    with pytest.raises(UserError, match="missing.jsonl' does not exist"):
        hellaswag.load(TasksConfig(hellaswag_file=str(tmp_path / "missing.jsonl")), data, None, Dist())


@pytest.fixture(scope="module")
def no_checkpoint_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("empty_run")
    (run / ".hydra").mkdir()
    return run


def refusal_cases(tmp: Path) -> list[tuple[list[str], list[str], dict]]:
    malformed = tmp / "malformed.jsonl"
    malformed.write_text('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 7}\n')
    fake = tmp / "no_lm_eval" / "lm_eval"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('lm_eval is not installed')\n")
    tasks = write_tasks(tmp)
    hide = {"PYTHONPATH": f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return [
        (["tasks=[hellaswog]"], ["unknown task 'hellaswog'", "did you mean hellaswag"], {}),
        (["tasks=[hellaswag]", f"eval.hellaswag_file={malformed}"], ["malformed.jsonl:1 is not a HellaSwag"], {}),
        (["harness=[toy_mc]"], ["not installed", 'pip install -e ".[eval]"'], hide),
        ([f"harness=[{tasks['toy_long_gen']}]"], ["'toy_long_gen' generates up to 64 tokens", "block_size is 32"], {}),
        ([f"harness=[{tasks['toy_gen']}]", "chat=true"], ["character-level vocabulary has no chat tokens"], {}),
        (["tasks=[hellaswag]", "chat=true"], ["chat=true applies the chat template to harness tasks"], {}),
    ]


def test_eval_refusals_are_one_line_and_leave_the_run_alone(eval_run, no_checkpoint_run, tmp_path):
    pytest.importorskip("lm_eval", reason="the generation-length case runs the harness")
    before = files_of(eval_run)
    for args, needles, env in refusal_cases(tmp_path):
        proc = run_entry("eval.py", f"run={eval_run}", *args, cwd=tmp_path, check=False, env=env)
        one_line_error(proc, *needles)
        assert files_of(eval_run) == before, args
    proc = run_entry("eval.py", f"run={no_checkpoint_run}", "tasks=[hellaswag]", cwd=tmp_path, check=False)
    one_line_error(proc, "holds no checkpoint", "train it first")
    assert [p.name for p in no_checkpoint_run.iterdir()] == [".hydra"]


def test_sweep_report_shows_downstream_metrics_beside_the_val_loss(tmp_path):
    """The report's table gains the tasks' final values, and val_loss.png a second plot of the acc_norm curves."""
    pytest.importorskip("matplotlib")
    from nanogpt.sweeps.report import write_report

    for job, accs in (("0", [0.25, 0.30]), ("1", [0.26, 0.35])):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- optim.lr=0.00{job}1\n")
        (tmp_path / job / "status.json").write_text('{"status": "completed"}')
        records = [
            {"iter": 10 * i, "train_loss": 3.0, "val_loss": 3.0 - i, "hellaswag_acc": a, "hellaswag_acc_norm": a + 0.01}
            for i, a in enumerate(accs)
        ]
        (tmp_path / job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report(str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert "| best_val_loss | best_val_bpb | hellaswag_acc | hellaswag_acc_norm | last_train_loss |" in report
    assert "| 2.0000 |  | 0.3500 | 0.3600 |" in report  # job 1's last evaluation (no bits per byte recorded)
    png = (tmp_path / "val_loss.png").read_bytes()
    assert png[:4] == b"\x89PNG" and int.from_bytes(png[16:20], "big") == 1400  # two panels side by side


def test_unknown_harness_task_names_the_closest(tmp_path, monkeypatch):
    """In-process: the harness's full index takes seconds to build, so it is swapped for one of local tasks."""
    pytest.importorskip("lm_eval")
    import lm_eval.tasks

    from nanogpt.errors import UserError
    from nanogpt.eval import harness

    write_tasks(tmp_path)
    local = lm_eval.tasks.TaskManager
    monkeypatch.setattr(
        lm_eval.tasks, "TaskManager", lambda **kw: local(include_path=str(tmp_path), include_defaults=False)
    )
    assert "toy_mc" in harness.check_tasks(["toy_mc", str(tmp_path / "toy_gen.yaml")]).all_tasks
    with pytest.raises(UserError, match="harness: unknown task 'toy_mx': did you mean toy_mc"):
        harness.check_tasks(["toy_mx"])
    with pytest.raises(UserError, match="task file '.*nope.yaml' does not exist"):
        harness.check_tasks([str(tmp_path / "nope.yaml")])
