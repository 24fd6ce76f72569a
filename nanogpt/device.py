"""Device and precision: pick the device, the dtype it can do, autocast, and its peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
from dataclasses import dataclass

import torch

from nanogpt import threads
from nanogpt.config import DeviceConfig
from nanogpt.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16/fp16 tensor-core peaks in FLOP/s per GPU, from the vendors' data sheets (no sparsity). The first key
# found in the GPU's name wins, so a variant comes before its family (H100 NVL before H100).
# H100 NVL and H200 NVL: NVIDIA's H100 and H200 product pages list "BF16 Tensor Core 1,671 TFLOPS" per GPU for the
# NVL (PCIe, NVLink-bridged) boards, a figure with 2:4 sparsity, so 835 TFLOPS dense; the SXM boards list 1,979
# (989 dense). Set device.peak_tflops for a GPU missing here.
_PEAK_FLOPS = [
    ("H200 NVL", 835e12),
    ("GH200", 989e12),
    ("H200", 989e12),  # SXM
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


@dataclass
class Precision:
    device: torch.device
    dtype: torch.dtype  # the compute dtype of autocast; float32 means no autocast
    compile: bool = False  # torch.compile the model (device.compile, resolved for this device)
    peak_tflops: float | None = None  # device.peak_tflops: one device's peak, instead of the table's
    threads: threads.Choice | None = None  # this process's intra-op threads, and why (nanogpt/threads.py)

    @property
    def device_type(self) -> str:
        return self.device.type

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        if self.device.type == "cpu":
            # The CPU's fused (flash) attention kernel is slow in bf16, its backward most (docs/BENCHMARKS.md).
            # Training's causal attention is written out and evaluation's asks for the fused kernel's forward
            # itself (kernels.attend); what else goes through scaled_dot_product_attention (a KV cache's masked
            # attention) takes its plain path.
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack = contextlib.ExitStack()
            stack.enter_context(torch.autocast(device_type="cpu", dtype=self.dtype))
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            return stack
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def needs_grad_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        return self.dtype == torch.float16

    def peak_flops(self) -> float | None:
        """One device's peak FLOP/s in this dtype, or None where we do not know it (then: no MFU)."""
        if self.peak_tflops is not None:
            return self.peak_tflops * 1e12
        if self.device.type != "cuda" or self.dtype == torch.float32:
            return None
        name = torch.cuda.get_device_name(self.device)
        return next((peak for key, peak in _PEAK_FLOPS if key in name), None)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX matrix units (Intel Sapphire Rapids and later): bf16 matmuls in hardware."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up with care
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


# Feature flags (Linux's /proc/cpuinfo names) that mean bf16 dot products in hardware: AVX512-BF16 (Intel Cooper
# Lake, Sapphire Rapids and later; AMD Zen 4 and later), AMX-BF16 (Sapphire Rapids and later), Arm's BF16
# extension (Neoverse V1/N2: Graviton 3 and 4, Grace; Apple M2 and later, where macOS names it FEAT_BF16).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The feature flags of /proc/cpuinfo's first processor: `flags` on x86, `Features` on Arm."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.lower().split())
    return frozenset()


def parse_sysctl(text: str) -> frozenset[str]:
    """The features `sysctl hw.optional` reports as present on macOS, under Linux's names (FEAT_BF16 -> bf16)."""
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip() == "1":
            name = key.strip().rsplit(".", 1)[-1].lower()
            flags.add(name.removeprefix("feat_"))
    return frozenset(flags)


@functools.cache
def cpu_features() -> frozenset[str]:
    """This CPU's feature flags, lower case (Linux's names); empty where the OS does not tell."""
    try:
        if sys.platform == "darwin":
            out = subprocess.run(["sysctl", "hw.optional"], capture_output=True, text=True, timeout=5).stdout
            return parse_sysctl(out)
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except (OSError, subprocess.SubprocessError):
        return frozenset()


def cpu_trains_faster_in_bf16(features: frozenset[str] | None = None) -> bool:
    """Whether bf16 autocast beats fp32 for training on this CPU: it needs bf16 dot products in hardware and
    PyTorch's oneDNN to use them. Without them bf16 is emulated, slower than fp32. macOS builds of PyTorch have no
    oneDNN: their fp32 matmuls go to Accelerate (Apple's matrix units) and bf16 ones to a generic loop, so Macs
    stay in fp32 even with FEAT_BF16 (inferred, not measured: docs/BENCHMARKS.md lists what was measured)."""
    if cpu_has_amx():
        return True
    if not (BF16_FLAGS & (cpu_features() if features is None else features)):
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private, so looked up with care
    return torch.backends.mkldnn.is_available() and check is not None and bool(check())


def resolve(cfg: DeviceConfig, local_rank: int | None = None) -> Precision:
    """The device and dtype `cfg` asks for, checked against what this machine has; this process's CPU threads set
    first, before torch starts its pool."""
    choice = threads.apply(cfg.threads)
    kind = cfg.device.split(":")[0]
    if kind == "auto":
        if torch.cuda.is_available():
            kind = "cuda"
        elif torch.backends.mps.is_available():
            kind = "mps"
        else:
            kind = "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device.device={cfg.device} but this machine has no CUDA GPU: use device=cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device.device={cfg.device} but MPS is not available here: use device=cpu or auto")
    if kind == "cuda":
        device = torch.device("cuda", _gpu_index(cfg.device, local_rank))
        torch.cuda.set_device(device)
    else:
        device = torch.device(kind)

    # Native bf16 only: torch counts emulated bf16 (pre-Ampere GPUs: T4, V100) as supported by default, and there
    # it is slow, without flash attention; those GPUs train in fp16 with a grad scaler instead.
    cuda_bf16 = kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if cfg.dtype == "auto":
        # CPUs with bf16 dot products run bf16 matmuls faster than fp32 (docs/BENCHMARKS.md, `device.dtype=auto`
        # on CPUs); CPUs without them emulate bf16, slower than fp32, and stay fp32.
        bf16_ok = cuda_bf16 if kind == "cuda" else kind == "cpu" and cpu_trains_faster_in_bf16()
        dtype = torch.bfloat16 if bf16_ok else (torch.float16 if kind == "cuda" else torch.float32)
    else:
        dtype = DTYPES[cfg.dtype]
    if kind == "cuda" and dtype == torch.bfloat16 and not cuda_bf16:
        raise UserError("device.dtype=bfloat16 but this GPU has no native bf16 (pre-Ampere): use device.dtype=float16")
    if kind == "cpu" and dtype == torch.float16:
        raise UserError("device.dtype=float16 is not supported for training on CPU: use float32 or bfloat16")
    if kind == "cuda" and cfg.matmul_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile = cfg.compile if cfg.compile is not None else kind == "cuda"
    return Precision(device, dtype, compile, cfg.peak_tflops, choice)


def _gpu_index(device: str, local_rank: int | None) -> int:
    """The GPU of this process: cuda:N as asked, else, launched as several processes, the one of its local rank.
    torchrun shows every process all the node's GPUs (ours is cuda:<local rank>); Slurm binding one GPU per task
    (--gpus-per-task, or CUDA_VISIBLE_DEVICES set per task) shows each task only its own, as cuda:0."""
    if local_rank is None:
        return int(device.split(":")[1]) if ":" in device else 0
    visible = torch.cuda.device_count()
    if visible == 1:
        return 0
    if local_rank >= visible:
        raise UserError(
            f"process {local_rank} of this node sees {visible} GPUs: launch at most one process per GPU "
            "(torchrun --nproc-per-node, or Slurm's --ntasks-per-node / --gpus-per-task)"
        )
    return local_rank
