"""GPU acceptance: what only a GPU shows about the training paths (issue 17). One PASS / FAIL / SKIP line per check,
then a summary; the exit status is 1 if a check failed.

    python benchmarks/gpu_check.py                      # one GPU: < 5 min; with 2+ GPUs the rest follow, < 5 more
    python benchmarks/gpu_check.py --only flash_train,fsdp_traffic
    python benchmarks/gpu_check.py --smoke              # on a CPU: what a CPU can run (checks this script)

One GPU
  dtype_auto      device.dtype=auto: bf16 where the GPU has it natively (sm80+), else fp16; device.compile=null on
  flash_train     training's attention runs flash attention: forced through sdpa_kernel, and seen in the profile
  flash_decode    so does KV-cache decoding, with the bf16 weights sample.py uses
  recompiles      torch.compile: no recompiles once the first train step and evaluation are compiled
  resume_fused    a checkpoint of a CPU run (plain AdamW) resumed on the GPU with fused AdamW: step counters float32
                  on the GPU, and training goes on
  mfu_124m        GPT-2 124M tokens/s and MFU (benchmarks/gpu_mfu.py's run, fewer steps)
Two or more GPUs (NCCL; gloo with --smoke)
  ddp_equals_one  DDP on 2 processes: one process's losses and weights (fp32, no TF32)
  fsdp_traffic    FSDP: one reduce-scatter per shard group per step under gradient accumulation; weights gathered
                  in bf16, gradients reduced in fp32 (counted by benchmarks/collectives.py)
  mfu_per_device  logged MFU is per device: one process's share of the job's tokens/s over one device's peak, and
                  on GPUs close to one GPU's MFU, not twice it
All runs use random token ids in the shape `prepare.py data=owt` writes: the machine needs no data set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import ENV, REPO, read_metrics  # benchmarks/ is on sys.path when this file runs as a script
from gpu_mfu import run_gpt2, write_random_owt

from nanogpt import checkpoint, optim, runs, sampling
from nanogpt import device as devices
from nanogpt.config import DeviceConfig, ModelConfig, OptimConfig
from nanogpt.model import GPT

ONE_GPU = ["dtype_auto", "flash_train", "flash_decode", "recompiles", "resume_fused", "mfu_124m"]
MULTI_GPU = ["ddp_equals_one", "fsdp_traffic", "mfu_per_device"]


class Checks:
    def __init__(self, tmp: Path, smoke: bool):
        self.tmp, self.smoke, self.results = tmp, smoke, []
        self.cuda = not smoke
        device = ["device=cpu"] if smoke else ["device=cuda", "device.compile=false"]
        block = 32 if smoke else 256
        # A small model on random GPT-2 ids: the checks look at paths, not at what is learned.
        self.small = ["data=owt", "model=tiny", f"model.block_size={block}", *device, f"paths.data_dir={tmp / 'data'}"]
        self.small += ["train.batch_size=4", "train.eval_iters=2", "train.log_interval=1", "optim.warmup_iters=2"]

    def report(self, name: str, status: str, detail: str) -> None:
        self.results.append(status)
        print(f"{status} {name}: {detail}", flush=True)

    def run_py(self, where: str, *args: str, env: dict | None = None, nproc: int = 1, script: str = "run.py"):
        """`script args` (run.py by default) in tmp/<where>, on `nproc` processes; its newest run dir."""
        cwd = self.tmp / where
        cwd.mkdir(parents=True, exist_ok=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        cmd = [*(launcher if nproc > 1 else [sys.executable]), str(REPO / script), *args]
        env = {**ENV, "NANOGPT_DIST_TIMEOUT": "120", **(env or {})}
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[-len(args) - 1 :])} exited {proc.returncode}: {proc.stderr[-1500:]}")
        runs_dir = cwd / "outputs" / "default"
        return max((p for p in runs_dir.iterdir() if not p.is_symlink()), default=None), proc

    # ---- one GPU ----

    def dtype_auto(self) -> None:
        prec = devices.resolve(DeviceConfig(compile=None))
        major, minor = torch.cuda.get_device_capability()
        want = torch.bfloat16 if major >= 8 else torch.float16
        ok = prec.dtype == want and prec.compile
        self.report(
            "dtype_auto",
            "PASS" if ok else "FAIL",
            f"{prec.dtype} on sm{major}{minor} (want {want}), compile {prec.compile}",
        )

    def _flash_ready(self, name: str) -> devices.Precision | None:
        major, _ = torch.cuda.get_device_capability()
        if major < 8:
            self.report(name, "SKIP", f"flash attention needs sm80+, this GPU is sm{major}x")
            return None
        return devices.resolve(DeviceConfig())

    def flash_train(self) -> None:
        prec = self._flash_ready("flash_train")
        if prec is None:
            return
        model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=256, block_size=256, vocab_size=1024)).to(prec.device)
        x = torch.randint(0, 1024, (4, 256), device=prec.device)

        def step() -> None:
            with prec.autocast():
                _, loss = model(x, x)
            loss.backward()

        with _only_flash():
            step()  # raises "No available kernel" if flash attention cannot take these inputs
        names = _kernels(step)
        self.report("flash_train", *_flash_verdict(names, "forward and backward"))

    def flash_decode(self) -> None:
        prec = self._flash_ready("flash_decode")
        if prec is None:
            return
        model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=256, block_size=256, vocab_size=1024)).to(prec.device)
        context = sampling.generation_weights(model.eval(), prec)
        prompt = torch.randint(0, 1024, (1, 16), device=prec.device)

        def decode() -> None:
            with context():
                model.generate(prompt, 32, temperature=0)

        with _only_flash():
            decode()
        self.report("flash_decode", *_flash_verdict(_kernels(decode), "prefill and cached decoding"))

    def recompiles(self) -> None:
        compiled = ["device.compile=true", "train.max_iters=12", "train.eval_interval=4"]
        run, proc = self.run_py("recompiles", *self.small, *compiled, env={"TORCH_LOGS": "recompiles"})
        lines = (proc.stderr + "\n" + (run / "run.log").read_text()).splitlines()
        # Each event once (the console and run.log may both have it): where, and the first guard that failed.
        found: dict[str, str] = {}
        for i, line in enumerate(lines):
            if "Recompiling function" in line:
                guard = next((g.strip() for g in lines[i + 1 : i + 4] if "- " in g), "")
                found.setdefault(line.strip(), line.split("Recompiling ", 1)[1] + " / " + guard)
        events = list(found.values())
        # The first evaluation (iter 0) compiles the eval graph, the first step the training one: one recompile.
        detail = f"{len(events)} recompile(s) over 12 steps and 4 evaluations" + (f": {events}" if events else "")
        self.report("recompiles", "PASS" if len(events) <= 1 else "FAIL", detail)

    def resume_fused(self) -> None:
        cpu = [a for a in self.small if not a.startswith(("device", "model.block_size"))]
        cpu += ["device=cpu", "model.block_size=32"]
        run, _ = self.run_py("resume", *cpu, "optim.fused=false", "train.max_iters=2")
        device = torch.device("cuda" if self.cuda else "cpu")
        model = runs.load_run(str(run), "latest").model.to(device)
        (opt,) = optim.build(model, OptimConfig(fused=True), device.type)
        optim.load_states([opt], checkpoint.load_state(checkpoint.find(str(run)))["optimizers"], model)
        steps = [s["step"] for s in opt.state.values()]
        placed = all(s.device == device and s.dtype == torch.float32 for s in steps)
        x = torch.zeros(1, 8, dtype=torch.long, device=device)
        model(x, x)[1].backward()
        opt.step()
        target = ["device.device=cuda", "device.compile=false"] if self.cuda else []
        self.run_py("resume", f"resume={run}", "train.max_iters=4", "optim.fused=null", *target)
        status = json.loads((run / "status.json").read_text())
        ok = placed and bool(steps) and status["iter"] == 4
        where = sorted({f"{s.device} {s.dtype}" for s in steps})
        self.report(
            "resume_fused", "PASS" if ok else "FAIL", f"step counters {where}; resumed run at iter {status['iter']}"
        )

    def mfu_124m(self) -> None:
        extra = ["model=tiny", "model.block_size=64", "device=cpu", "device.peak_tflops=1e-3"] if self.smoke else []
        extra += ["train.grad_accum=2", "train.log_interval=1"] if self.smoke else []
        try:
            for microbatch in [4] if self.smoke else [32, 16, 8]:
                status, fig = run_gpt2(self.tmp, microbatch, 4 if self.smoke else 30, extra)
                if status == "ok":
                    break
            else:
                return self.report("mfu_124m", "FAIL", "every microbatch ran out of memory")
        except SystemExit as e:  # gpu_mfu's way of saying a run failed
            return self.report("mfu_124m", "FAIL", str(e)[-1500:])
        what = f"microbatch {fig['microbatch']} x {fig['accum']}: {fig['tokens_per_s']:,.0f} tokens/s"
        if fig["mfu"] is None:
            return self.report(
                "mfu_124m", "SKIP", f"{what}; GPU not in the peak table: add device.peak_tflops=<TFLOP/s>"
            )
        plausible = fig["mfu"] > 0 and (self.smoke or fig["mfu"] < 1)  # --smoke: a made-up peak
        self.report("mfu_124m", "PASS" if plausible else "FAIL", f"{what}, MFU {100 * fig['mfu']:.1f}%")

    # ---- two processes ----

    def ddp_equals_one(self) -> None:
        exact = ["device.dtype=float32", "device.matmul_tf32=false", "train.grad_accum=2", "train.max_iters=6"]
        common = [*self.small, *exact, "train.eval_interval=3"]
        one, _ = self.run_py("ddp1", *common)
        two, _ = self.run_py("ddp2", *common, nproc=2)
        keys = ("iter", "loss", "val_loss")
        a, b = ([tuple(r.get(k) for k in keys) for r in read_metrics(run)] for run in (one, two))
        loss_gap = max(
            abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True) if x is not None
        )
        wa, wb = (_weights(run) for run in (one, two))
        weight_gap = max((wa[k] - wb[k]).abs().max().item() for k in wa)
        ok = len(a) == len(b) and loss_gap < 1e-4 and weight_gap < 1e-4
        self.report(
            "ddp_equals_one", "PASS" if ok else "FAIL", f"max loss gap {loss_gap:.2e}, weight gap {weight_gap:.2e}"
        )

    def fsdp_traffic(self) -> None:
        steps, counts = 2, self.tmp / "counts"
        loop = [f"train.max_iters={steps}", "train.eval_interval=2", "train.grad_accum=8", "train.parallel=fsdp"]
        run, _ = self.run_py("fsdp", str(counts), *self.small, *loop, nproc=2, script="benchmarks/collectives.py")
        groups = _info(run)["model"]["n_layer"] + 1  # a shard group per block, and the root
        rank0 = json.loads((counts / "collectives-rank0.json").read_text())
        rs, ag = rank0["reduce_scatter"], rank0["all_gather"]
        low = "torch.float32" if self.smoke else str(devices.resolve(DeviceConfig()).dtype)
        ok = rs["calls"] == steps * groups and rs["dtypes"] == ["torch.float32"] and ag["dtypes"] == [low]
        detail = (
            f"{rs['calls'] / steps:g} reduce-scatters a step (want {groups}: one per shard group), "
            f"{rs['bytes'] / steps / 2**20:.1f} MiB in {rs['dtypes']}; all-gathers in {ag['dtypes']} (want {low}), "
            f"{ag['bytes'] / steps / 2**20:.1f} MiB a step, evaluations included"
        )
        self.report("fsdp_traffic", "PASS" if ok else "FAIL", detail)

    def mfu_per_device(self) -> None:
        if self.smoke:
            work = [*self.small, "device.peak_tflops=1e-3"]
        else:
            work = [
                "data=owt",
                "model=gpt2",
                "device=cuda",
                "device.compile=false",
                f"paths.data_dir={self.tmp / 'data'}",
            ]
            work += ["train.batch_size=8", "train.eval_iters=1", "optim.warmup_iters=2"]
        work += ["train.max_iters=20", "train.eval_interval=1000", "train.log_interval=5"]
        one, _ = self.run_py("mfu1", *work, "train.grad_accum=1")
        two, _ = self.run_py("mfu2", *work, "train.grad_accum=2", nproc=2)  # the same work per device
        flops_per_token = GPT(ModelConfig(**_info(one)["model"])).flops_per_token()
        peak = {run: _peak(run) for run in (one, two)}
        mfu, formula_ok = {}, True
        for run, world in ((one, 1), (two, 2)):
            steps = [r for r in read_metrics(run) if "mfu" in r][1:]  # the first interval holds the warm-up
            for r in steps:
                expected = flops_per_token * r["tokens_per_s"] / world / peak[run]
                formula_ok &= abs(r["mfu"] - expected) < 1e-3 * expected + 1e-4
            mfu[world] = statistics.median(r["mfu"] for r in steps)
        ratio = mfu[2] / mfu[1]
        ok = formula_ok and (self.smoke or 0.7 < ratio < 1.3)
        detail = f"MFU {100 * mfu[1]:.1f}% on 1 process, {100 * mfu[2]:.1f}% per device on 2 (ratio {ratio:.2f})"
        self.report("mfu_per_device", "PASS" if ok else "FAIL", detail + ("" if formula_ok else "; formula mismatch"))


def _only_flash():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def _kernels(fn) -> set[str]:
    """The names of the GPU kernels `fn` launches (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages()}


def _flash_verdict(names: set[str], what: str) -> tuple[str, str]:
    flash = sorted(n for n in names if "flash" in n.lower())
    if flash:
        return "PASS", f"{what}: {len(flash)} flash kernel(s), e.g. {flash[0][:80]}"
    attention = sorted(n[:60] for n in names if any(s in n.lower() for s in ("fmha", "sdpa", "attention", "cudnn")))
    return "FAIL", f"{what}: no flash kernel in the profile; attention kernels seen: {attention or 'none (math path)'}"


def _info(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "latest" / "info.json").read_text())


def _peak(run: Path) -> float:
    from omegaconf import OmegaConf

    device = OmegaConf.load(run / ".hydra" / "config.yaml").device
    if device.peak_tflops is not None:
        return device.peak_tflops * 1e12
    return devices.resolve(DeviceConfig(device="cuda")).peak_flops()


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "latest" / "model.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="on a CPU: tiny models, gloo; checks the script, no figure")
    ap.add_argument("--only", help="comma-separated checks to run (default: all this machine can)")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: needs a CUDA GPU (use --smoke to check the script on a CPU)")
    gpus = 0 if args.smoke else torch.cuda.device_count()
    wanted = args.only.split(",") if args.only else ONE_GPU + MULTI_GPU
    unknown = set(wanted) - set(ONE_GPU + MULTI_GPU)
    if unknown:
        sys.exit(
            f"gpu_check: no check named {', '.join(sorted(unknown))}; the checks: {', '.join(ONE_GPU + MULTI_GPU)}"
        )
    name = "CPU (smoke run: plumbing, not a GPU result)" if args.smoke else f"{torch.cuda.get_device_name()} x {gpus}"
    print(f"gpu_check: {name}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        checks = Checks(Path(tmp_name), args.smoke)
        write_random_owt(checks.tmp / "data", 200_000 if args.smoke else 20_000_000)
        for check in wanted:
            if args.smoke and check in ("dtype_auto", "flash_train", "flash_decode"):
                checks.report(check, "SKIP", "needs a CUDA GPU")
            elif args.smoke and check == "recompiles" and not args.only:
                checks.report(check, "SKIP", "compiling on a CPU takes minutes: ask for it with --only recompiles")
            elif check in MULTI_GPU and not args.smoke and gpus < 2:
                checks.report(check, "SKIP", f"needs 2 GPUs, this machine has {gpus}")
            else:
                try:
                    getattr(checks, check)()
                except Exception as e:  # a check that crashes is a failed check; the others still run
                    checks.report(check, "FAIL", f"{type(e).__name__}: {str(e)[-1500:]}")
        counts = {s: checks.results.count(s) for s in ("PASS", "FAIL", "SKIP")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    print(f"gpu_check: {summary} in {time.perf_counter() - t0:.0f} s")
    sys.exit(1 if counts["FAIL"] else 0)


if __name__ == "__main__":
    main()
