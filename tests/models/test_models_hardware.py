"""Hardware detection: parsing /proc/cpuinfo, sane types, and the bf16 decision."""

from __future__ import annotations

import pytest

from tunelab.models import hardware


@pytest.fixture(autouse=True)
def _hardware_decides(monkeypatch):
    """These tests check what the hardware says; $TUNELAB_BF16 (which overrides it) is unset here."""
    monkeypatch.delenv("TUNELAB_BF16", raising=False)

CPUINFO_2x2_HT = "\n".join(
    f"processor\t: {n}\nphysical id\t: {n // 4}\ncore id\t\t: {(n // 2) % 2}\n"
    "flags\t\t: fpu sse avx avx2 fma avx512f avx512_bf16\n"
    for n in range(8)
)


def test_parse_flags_and_cores():
    assert {"avx2", "avx512f", "avx512_bf16"} <= hardware.parse_cpuinfo_flags(CPUINFO_2x2_HT)
    assert hardware.parse_physical_cores(CPUINFO_2x2_HT) == 4  # 2 sockets x 2 cores, hyper-threaded
    assert hardware.parse_cpuinfo_flags("processor : 0\n") == set()
    assert hardware.parse_physical_cores("processor : 0\n") is None


def test_capability_fallback():
    assert hardware.features_from_capability("AVX2") == {
        "avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False}
    assert hardware.features_from_capability("AVX512")["avx512f"]
    assert not hardware.features_from_capability("DEFAULT")["avx2"]


def test_detection_returns_sane_types():
    feats = hardware.cpu_features()
    assert all(isinstance(feats[f], bool) for f in hardware.CPU_FEATURES)
    assert feats["source"] in ("/proc/cpuinfo", "torch") and isinstance(feats["torch_capability"], str)
    assert isinstance(hardware.physical_cores(), int) and hardware.physical_cores() >= 1
    cuda = hardware.cuda_info()
    assert isinstance(cuda["available"], bool) and isinstance(cuda["bf16"], bool)
    assert len(cuda["devices"]) == cuda["device_count"]
    pays, why = hardware.bf16_pays()
    assert isinstance(pays, bool) and why
    summary = hardware.hardware_summary()
    assert summary["bf16_pays"] is pays and summary["cpu"]["physical_cores"] >= 1


def _cpu(monkeypatch, **flags):
    feats = {f: False for f in hardware.CPU_FEATURES} | {"source": "/proc/cpuinfo", "torch_capability": "AVX2"}
    monkeypatch.setattr(hardware, "cpu_features", lambda: feats | flags)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [({"avx2": True}, False), ({"avx2": True, "avx512f": True}, False),
     ({"avx512f": True, "avx512_bf16": True}, True), ({"amx_bf16": True, "amx_tile": True}, True)],
)
def test_bf16_pays_only_with_native_bf16_on_cpu(monkeypatch, flags, expected):
    _cpu(monkeypatch, **flags)
    pays, why = hardware.bf16_pays("cpu")
    assert pays is expected and why


def test_bf16_on_gpu(monkeypatch):
    _cpu(monkeypatch, avx2=True)
    gpu = {"available": True, "device_count": 1, "bf16": False, "torch_cuda": "12.4",
           "devices": [{"index": 0, "name": "Tesla T4", "capability": "7.5", "memory_gib": 15.0}]}
    monkeypatch.setattr(hardware, "cuda_info", lambda: gpu)
    assert hardware.bf16_pays() == (False, "Tesla T4 has no native bf16 (compute capability < 8.0); use fp16 there")
    monkeypatch.setattr(hardware, "cuda_info", lambda: gpu | {"bf16": True})
    assert hardware.bf16_pays()[0] is True
    # asking about the CPU ignores the GPU
    assert hardware.bf16_pays("cpu")[0] is False


def test_this_machine_flags_match_proc_cpuinfo():
    # the decision must follow the real flags: no native bf16 flag -> bf16 does not pay on this CPU
    feats = hardware.cpu_features()
    native = feats["avx512_bf16"] or feats["amx_bf16"] or feats["amx_tile"]
    assert hardware.bf16_pays("cpu")[0] is bool(native)
