"""The multi-GPU and GPU-only paths, checked where a CPU can show them (issue 17): two gloo processes stand in for
two GPUs, and monkeypatched torch.cuda functions for the GPU itself. benchmarks/gpu_check.py checks the rest on a
GPU. Each test names the defect it guards in docs/RELIABILITY.md ("Multi-GPU and GPU-only paths")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nanogpt import checkpoint, distributed, optim, runs, sampling, trainer
from nanogpt import device as devices
from nanogpt.config import DeviceConfig, ModelConfig, OptimConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT, KVCache
from tests.helpers import OFFLINE_ENV, REPO, TINY, free_port, run_dirs, run_entry

# An FSDP step of 8 micro-batches (4 per process) with evaluations over 3 batches (not a multiple of 2 processes),
# and a peak of 1 MFLOP/s so that MFU is large enough to compare at the 4 decimals metrics.jsonl keeps.
STEPS = 2
FSDP_RUN = [
    "train.grad_accum=8",
    f"train.max_iters={STEPS}",
    f"train.eval_interval={STEPS}",
    "train.eval_iters=3",
    "device.peak_tflops=1e-6",
]


def torchrun(cwd: Path, script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`script args...` on two gloo processes in `cwd`; a collective that does not match fails within 60 s."""
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}"]
    env = {**os.environ, **OFFLINE_ENV, "NANOGPT_DIST_TIMEOUT": "60", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*cmd, script, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def fsdp_and_one(tmp_path_factory, char_data) -> tuple[Path, Path, list[dict]]:
    """The same run on one process and under FSDP on two, the latter counting each rank's collectives."""
    base = tmp_path_factory.mktemp("fsdp")
    common = [*TINY, f"paths.data_dir={char_data}", *FSDP_RUN]
    (base / "one").mkdir()
    run_entry("run.py", *common, cwd=base / "one")
    one = run_dirs(base / "one")[-1]
    counts = base / "counts"
    torchrun(base / "fsdp", str(REPO / "benchmarks" / "collectives.py"), str(counts), *common, "train.parallel=fsdp")
    fsdp = run_dirs(base / "fsdp")[-1]
    per_rank = [json.loads((counts / f"collectives-rank{r}.json").read_text()) for r in range(2)]
    return one, fsdp, per_rank


def test_fsdp_syncs_gradients_once_per_step(fsdp_and_one):
    """Defect 2: FSDP2 reads set_requires_gradient_sync during the backward; set around the forward only, every
    micro-batch reduce-scattered (4x here)."""
    _, fsdp, per_rank = fsdp_and_one
    n_layer = json.loads((fsdp / "checkpoints" / "latest" / "info.json").read_text())["model"]["n_layer"]
    groups = n_layer + 1  # a shard group per block, and the root (embeddings, final norm, head)
    for counts in per_rank:
        assert counts["reduce_scatter"]["calls"] == STEPS * groups, counts


def test_fsdp_evaluates_any_number_of_batches_and_equals_one_process(fsdp_and_one):
    """Defect 3 (eval_iters=3 on 2 processes used to hang at the first evaluation), and the meta-device build:
    ranks > 0 build no weights of their own, yet every loss and the final weights equal one process's."""
    one, fsdp, _ = fsdp_and_one
    assert json.loads((fsdp / "status.json").read_text())["status"] == "completed"
    a, b = records(one), records(fsdp)
    assert [r["iter"] for r in a] == [r["iter"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "train_loss", "val_loss"):
            assert (key in ra) == (key in rb) and abs(ra.get(key, 0) - rb.get(key, 0)) < 1e-5, (ra, rb)
    wa, wb = (load_file(str(r / "checkpoints" / "latest" / "model.safetensors")) for r in (one, fsdp))
    assert wa.keys() == wb.keys() and all((wa[k] - wb[k]).abs().max() < 1e-5 for k in wa)


def test_mfu_is_per_device(fsdp_and_one):
    """Defect 1: tokens_per_s is the whole job's rate; MFU takes one process's share of it against one device's
    peak (device.peak_tflops here). It used to be overstated by the number of processes."""
    for run, processes in zip(fsdp_and_one[:2], (1, 2), strict=True):
        info = json.loads((run / "checkpoints" / "latest" / "info.json").read_text())
        flops_per_token = GPT(ModelConfig(**info["model"])).flops_per_token()
        steps = [r for r in records(run) if "tokens_per_s" in r]
        assert len(steps) == STEPS
        for r in steps:
            expected = flops_per_token * r["tokens_per_s"] / processes / 1e6
            assert r["mfu"] == pytest.approx(expected, rel=1e-3), (processes, r)


def test_several_processes_refuse_unprepared_data(tmp_path):
    """Defect 5: rank 0 used to prepare while the others waited at a barrier for up to 600 s."""
    data = f"paths.data_dir={tmp_path / 'data'}"
    proc = torchrun(tmp_path, str(REPO / "run.py"), *TINY, data, "train.grad_accum=2", "train.max_iters=1", check=False)
    assert proc.returncode != 0
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1, proc.stderr[-3000:]  # each rank prints the same line
    (line,) = errors
    assert "not prepared" in line and "python prepare.py data=shakespeare_char" in line and "2 processes" in line
    assert not (tmp_path / "data").exists()


def test_evaluation_only_on_two_processes_ignores_grad_accum(tmp_path, char_data):
    """Defect 9: eval_gpt2* (grad_accum 1) could not run on several processes; evaluation takes no steps."""
    torchrun(tmp_path, str(REPO / "run.py"), *TINY, f"paths.data_dir={char_data}", "train.eval_only=true")
    [run] = run_dirs(tmp_path)
    assert [r["iter"] for r in records(run)] == [0]


# ---- resume across dtypes and optimizer settings (defects 6 and 8) ----


def resume_in_process(run: Path, fused: bool, dtype: torch.dtype) -> tuple[torch.optim.Optimizer, list[dict]]:
    """A run's latest checkpoint resumed as trainer.build does, with AdamW `fused` and a grad scaler as `dtype`
    needs one; returns the optimizer and the state dicts its load_state_dict was given."""
    model = runs.load_run(str(run), "latest").model
    (opt,) = optim.build(model, OptimConfig(fused=fused), "cpu")
    given: list[dict] = []
    load = opt.load_state_dict
    opt.load_state_dict = lambda state: (given.append(state), load(state))[1]
    precision = devices.Precision(torch.device("cpu"), dtype)
    scaler = torch.amp.GradScaler("cpu", enabled=precision.needs_grad_scaler())
    saved_iter = trainer._resume(checkpoint.find(str(run)), model, [opt], scaler, distributed.Dist(), precision).iter
    if scaler.is_enabled():
        assert scaler.get_scale() == 2.0**16  # afresh: the checkpoint's run had no loss scaling
    steps = [s["step"] for s in opt.state.values()]
    # Where the (fused) kernel wants the step counters: float32, on the parameters' device.
    assert steps and all(s.dtype == torch.float32 and s.device == model.lm_head.weight.device for s in steps)
    _, loss = model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    loss.backward()
    opt.step()  # the restored state goes through the kernel
    assert all(s["step"].item() == saved_iter + 1 for s in opt.state.values())
    return opt, given


def test_resume_across_dtypes_and_fused_adamw(tmp_path, char_data):
    """Defects 6 and 8: an enabled grad scaler refused the {} a disabled one saves; the optimizer's configured
    settings (fused) were put in only after load_state_dict had placed the state by the saved ones."""
    run_entry("run.py", *TINY, f"paths.data_dir={char_data}", "train.max_iters=2", "optim.fused=false", cwd=tmp_path)
    run = run_dirs(tmp_path)[-1]
    assert checkpoint.load_state(checkpoint.find(str(run)))["scaler"] == {}  # fp32: the grad scaler was off

    # An fp16 run with fused AdamW resumes it: the settings go in with the state, the scaler starts afresh.
    opt, given = resume_in_process(run, fused=True, dtype=torch.float16)
    assert all(g["fused"] for g in given[0]["param_groups"]) and all(g["fused"] for g in opt.param_groups)

    # End to end in bf16 with fused AdamW; then that checkpoint into a plain AdamW in fp32.
    run_entry("run.py", f"resume={run}", "train.max_iters=4", "optim.fused=true", "device.dtype=bfloat16", cwd=tmp_path)
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["iter"] == 4
    opt, given = resume_in_process(run, fused=False, dtype=torch.float32)
    assert not any(g["fused"] for g in given[0]["param_groups"])
    # And an fp16 checkpoint's loss scale into a run without one: ignored.
    trainer._load_scaler(torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu").state_dict())


# ---- the device: dtype=auto, the visible GPU, peak FLOP/s, compile (defects 4 and 9) ----


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda as on a node whose GPUs are set per test: its name, its count, and native bf16 or not."""
    gpu = {"name": "NVIDIA A100-SXM4-80GB", "count": 8, "native_bf16": True, "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpu["count"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: gpu["set"].append(d))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: gpu["name"])
    # torch 2.13 counts emulated bf16 (what a T4 or V100 has) as supported unless asked for native support.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: gpu["native_bf16"] or including_emulation
    )
    return gpu


def gpu(dtype: str = "auto", compile: bool | None = False, device: str = "cuda", **kw) -> DeviceConfig:
    return DeviceConfig(device=device, dtype=dtype, compile=compile, matmul_tf32=False, **kw)


def test_dtype_auto_is_fp16_on_gpus_without_native_bf16(fake_gpu):
    assert devices.resolve(gpu()).dtype == torch.bfloat16
    fake_gpu.update(name="Tesla T4", native_bf16=False)
    prec = devices.resolve(gpu())
    assert prec.dtype == torch.float16 and prec.needs_grad_scaler()
    with pytest.raises(UserError, match="device.dtype=bfloat16 but this GPU has no native bf16.*float16"):
        devices.resolve(gpu("bfloat16"))


def test_one_visible_gpu_per_task_is_cuda_0(fake_gpu):
    """Slurm binding a GPU per task shows each task one GPU, cuda:0, whatever its local rank; torchrun shows all."""
    assert devices.resolve(gpu(), local_rank=3).device == torch.device("cuda", 3)
    fake_gpu["count"] = 1
    assert devices.resolve(gpu(), local_rank=3).device == torch.device("cuda", 0)
    assert fake_gpu["set"][-1] == torch.device("cuda", 0)
    fake_gpu["count"] = 2
    with pytest.raises(UserError, match="process 3 of this node sees 2 GPUs"):
        devices.resolve(gpu(), local_rank=3)
    assert devices.resolve(gpu(device="cuda:1")).device == torch.device("cuda", 1)  # one process: as asked


def test_peak_flops_table_and_override(fake_gpu):
    for name, tflops in [("NVIDIA H100 NVL", 835), ("NVIDIA H200 NVL", 835), ("NVIDIA H100 80GB HBM3", 989)]:
        fake_gpu["name"] = name
        assert devices.resolve(gpu()).peak_flops() == tflops * 1e12
    fake_gpu["name"] = "NVIDIA Some Future GPU"
    assert devices.resolve(gpu()).peak_flops() is None
    assert devices.resolve(gpu(peak_tflops=123.0)).peak_flops() == 123e12
    assert devices.resolve(DeviceConfig(device="cpu", peak_tflops=0.5)).peak_flops() == 0.5e12


def test_compile_null_means_on_cuda_only(fake_gpu):
    assert devices.resolve(gpu(compile=None)).compile
    assert not devices.resolve(DeviceConfig(device="cpu", compile=None)).compile
    assert devices.resolve(DeviceConfig(device="cpu", compile=True)).compile


def test_mps_rng_state_is_saved_and_restored(monkeypatch):
    state = {"mps": torch.tensor([1, 2, 3], dtype=torch.uint8), "restored": None}
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: state["mps"])
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda s: state.update(restored=s))
    mps, one = torch.device("mps"), distributed.Dist()
    saved = distributed.gather_rng_states(one, mps)
    assert saved[0]["mps"].equal(state["mps"])
    distributed.set_rng_state(saved, one, mps)
    assert state["restored"] is saved[0]["mps"]


# ---- sampling (defect 9) ----


def test_bf16_generation_keeps_the_rotary_tables_fp32():
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50, rotary=True)
    ref = GPT(cfg).eval()
    model = GPT(cfg).eval()
    model.load_state_dict(ref.state_dict())
    context = sampling.generation_weights(model, devices.Precision(torch.device("cpu"), torch.bfloat16))
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.rotary.cos.dtype == model.rotary.sin.dtype == torch.float32
    assert model.rotary.cos.equal(ref.rotary.cos) and model.rotary.sin.equal(ref.rotary.sin)
    idx = torch.randint(0, 50, (2, 40))
    with context():
        logits, _ = model(idx)
    assert (logits.float() - ref(idx)[0]).abs().max() < 0.05  # bf16 weights: a few units in the third digit


def test_kv_cache_is_made_in_the_autocast_dtype(monkeypatch):
    made = []

    class Recording(KVCache):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self.k[0].dtype)

    monkeypatch.setattr("nanogpt.model.KVCache", Recording)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=20)).eval()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    model.generate(prompt, 2, temperature=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.generate(prompt, 2, temperature=0)
    assert made == [torch.float32, torch.bfloat16]


# ---- the GPU acceptance script ----


def test_gpu_check_smoke_runs_its_cpu_checks(tmp_path):
    """benchmarks/gpu_check.py cannot run for real here: --smoke runs the same machinery on tiny CPU models (the
    GPU-only checks say SKIP), so that it works the day a GPU is lent."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--only", "dtype_auto,fsdp_traffic"]
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[1] == "SKIP dtype_auto: needs a CUDA GPU"
    assert lines[2].startswith("PASS fsdp_traffic: 3 reduce-scatters a step (want 3: one per shard group)")
    assert lines[-1].startswith("gpu_check: 1 PASS, 0 FAIL, 1 SKIP in ")
    proc = subprocess.run([*cmd[:3], "--only", "flash"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "no check named flash" in proc.stderr
