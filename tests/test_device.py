"""The choices made for the device: `device.dtype=auto` (bf16 autocast where the CPU has bf16 dot products in
hardware and PyTorch's oneDNN can use them, measured on Zen 4 and Sapphire Rapids, else fp32) and
compiled graphs kept in a persistent Inductor cache."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nanogpt import device

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni
processor\t: 1
flags\t\t: fpu
"""
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512dq avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes sve asimddp bf16 i8mm svebf16\n"
MAC_M2 = "hw.optional.arm.FEAT_BF16: 1\nhw.optional.arm.FEAT_I8MM: 1\nhw.optional.floatingpoint: 1\n"
MAC_M1 = "hw.optional.arm.FEAT_BF16: 0\nhw.optional.arm.FEAT_DotProd: 1\n"


def test_feature_flags_are_read_from_cpuinfo_and_sysctl():
    assert {"avx512_bf16", "avx512f"} <= device.parse_cpuinfo(ZEN4) and "fpu" in device.parse_cpuinfo(ZEN4)
    assert not device.parse_cpuinfo(SKYLAKE) & device.BF16_FLAGS
    assert {"bf16", "svebf16", "i8mm"} <= device.parse_cpuinfo(GRAVITON3)
    assert {"bf16", "i8mm", "floatingpoint"} == device.parse_sysctl(MAC_M2)
    assert device.parse_sysctl(MAC_M1) == {"dotprod"} and device.parse_cpuinfo("") == frozenset()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_this_cpus_flags_agree_with_torchs_own_probe():
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is None or "flags" not in open("/proc/cpuinfo").read():
        pytest.skip("not an x86 CPU, or this torch has no AVX512-BF16 probe")
    assert ("avx512_bf16" in device.cpu_features()) == probe()


def test_bf16_is_chosen_only_with_hardware_dot_products_and_onednn(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_amx", lambda: False)
    zen4, skylake, mac_m2 = device.parse_cpuinfo(ZEN4), device.parse_cpuinfo(SKYLAKE), device.parse_sysctl(MAC_M2)
    assert not device.cpu_trains_faster_in_bf16(skylake)
    onednn_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert device.cpu_trains_faster_in_bf16(zen4) == onednn_bf16
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # macOS builds: no oneDNN
    assert not device.cpu_trains_faster_in_bf16(mac_m2) and not device.cpu_trains_faster_in_bf16(zen4)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)  # AMX: bf16, as before
    assert device.cpu_trains_faster_in_bf16(skylake)


def test_inductor_cache_persists_unless_the_user_chose(monkeypatch, tmp_path):
    from nanogpt import inductor

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")  # the user's choice stays
    assert inductor.use_persistent_cache() == str(tmp_path / "xdg" / "nanogpt" / "inductor")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "xdg" / "nanogpt" / "inductor")
    assert os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] == "1" and os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] == "0"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert inductor.use_persistent_cache() == str(tmp_path / "mine")


def test_isa_probe_runs_once_in_the_background_and_answers_inductor():
    """The probe thread fills the answer Inductor's kernels ask for; a second compile starts no second probe."""
    from torch._inductor import cpu_vec_isa

    from nanogpt import inductor

    thread = inductor.probe_cpu_isa_in_background()
    assert thread.name == "inductor-isa-probe" and inductor.probe_cpu_isa_in_background() is thread
    thread.join(timeout=120)
    assert not thread.is_alive() and cpu_vec_isa.valid_vec_isa_list.cache_info().currsize == 1
    probe = "from torch._inductor import cpu_vec_isa as v; i = v.pick_vec_isa(); print(i, i.build_arch_flags())"
    alone = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    isa = cpu_vec_isa.pick_vec_isa()
    assert f"{isa} {isa.build_arch_flags()}" == alone  # the same answer as a process probing on its main thread
