"""What this machine can do: CPU vector features, physical cores, CUDA, and whether bf16 pays.

bf16 is only a speed-up where the hardware computes it natively: on CPUs with avx512_bf16 or AMX, or
on bf16-capable GPUs (compute capability 8.0+). On AVX2-only CPUs PyTorch emulates bf16 matmuls and
they run several times slower than fp32, so tunelab must detect and choose rather than assume.
Features come from /proc/cpuinfo flags (Linux); elsewhere from torch's CPU capability string, which
only distinguishes the AVX2/AVX512 levels.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
_CPUINFO = Path("/proc/cpuinfo")


def parse_cpuinfo_flags(text: str) -> set[str]:
    """The feature flags of the first processor listed in a /proc/cpuinfo text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        # x86 calls them "flags", arm64 "Features"
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def parse_physical_cores(text: str) -> int | None:
    """Distinct (physical id, core id) pairs in a /proc/cpuinfo text; None when it does not say."""
    cores: set[tuple[str, str]] = set()
    physical = core = None
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():
            if physical is not None and core is not None:
                cores.add((physical, core))
            physical = core = None
    return len(cores) or None


@functools.lru_cache(maxsize=1)
def _cpuinfo_text() -> str:
    try:
        return _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _torch_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        return "unknown"


def features_from_capability(capability: str) -> dict[str, bool]:
    """Best guess from torch's capability string ("DEFAULT", "AVX2", "AVX512", ...): no bf16/AMX info."""
    cap = capability.upper()
    return {
        "avx2": cap in ("AVX2", "AVX512") or cap.startswith("AVX512"),
        "avx512f": cap.startswith("AVX512"),
        "avx512_bf16": False,
        "amx_bf16": False,
        "amx_tile": False,
    }


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, Any]:
    """{"avx2": bool, ..., "source": "/proc/cpuinfo" | "torch", "torch_capability": str}."""
    flags = parse_cpuinfo_flags(_cpuinfo_text())
    capability = _torch_capability()
    if flags:
        found: dict[str, Any] = {name: name in flags for name in CPU_FEATURES}
        found["source"] = "/proc/cpuinfo"
    else:
        found = dict(features_from_capability(capability))
        found["source"] = "torch"
    found["torch_capability"] = capability
    return found


def physical_cores() -> int:
    """Physical cores usable by this process (hyper-threads are not extra cores for matmuls)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    physical = parse_physical_cores(_cpuinfo_text())
    return max(1, min(usable, physical) if physical else usable)


def cuda_info() -> dict[str, Any]:
    """CUDA devices as torch sees them: {"available", "device_count", "devices": [...], "bf16"}."""
    try:
        import torch
    except ImportError:
        return {"available": False, "device_count": 0, "devices": [], "bf16": False, "torch_cuda": None}
    available = bool(torch.cuda.is_available())
    info: dict[str, Any] = {"available": available, "device_count": 0, "devices": [], "bf16": False,
                            "torch_cuda": torch.version.cuda}
    if not available:
        return info
    info["device_count"] = torch.cuda.device_count()
    for i in range(info["device_count"]):
        props = torch.cuda.get_device_properties(i)
        info["devices"].append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                                "memory_gib": round(props.total_memory / 2**30, 1)})
    info["bf16"] = bool(torch.cuda.is_bf16_supported())
    return info


BF16_ENV = "TUNELAB_BF16"


def _forced_bf16() -> tuple[bool, str] | None:
    """$TUNELAB_BF16=1/0 forces the decision either way, so that one machine can exercise both paths
    (tests, or comparing speed and loss on the same CPU); anything else leaves it to the hardware."""
    value = os.environ.get(BF16_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True, f"forced on by {BF16_ENV}={value}"
    if value in ("0", "false", "no", "off"):
        return False, f"forced off by {BF16_ENV}={value}"
    if value:
        from ..errors import TunelabError

        raise TunelabError(f"{BF16_ENV}={value!r} is not understood; use 1 (bf16) or 0 (fp32), or unset it")
    return None


def bf16_pays(device: str = "auto") -> tuple[bool, str]:
    """Whether bf16 compute is faster than fp32 on `device` ("auto": the GPU if there is one), and why.
    On the CPU, $TUNELAB_BF16 overrides the answer (see _forced_bf16)."""
    if device in ("auto", "cuda") or device.startswith("cuda:"):
        gpu = cuda_info()
        if gpu["available"]:
            name = gpu["devices"][0]["name"] if gpu["devices"] else "GPU"
            if gpu["bf16"]:
                return True, f"{name} computes bf16 natively"
            return False, f"{name} has no native bf16 (compute capability < 8.0); use fp16 there"
        if device != "auto":
            return False, "no CUDA device is available"
    forced = _forced_bf16()
    if forced is not None:
        return forced
    feats = cpu_features()
    if feats["amx_bf16"] or feats["amx_tile"]:
        return True, "CPU has AMX (bf16 tile matmuls)"
    if feats["avx512_bf16"]:
        return True, "CPU has avx512_bf16"
    if feats["source"] == "torch":
        return False, f"CPU bf16 support unknown (no /proc/cpuinfo; torch capability {feats['torch_capability']})"
    level = "AVX-512" if feats["avx512f"] else "AVX2" if feats["avx2"] else "no AVX2"
    return False, f"CPU has {level} but no avx512_bf16/AMX: bf16 matmuls are emulated and slower than fp32"


def hardware_summary() -> dict[str, Any]:
    """Everything above in one JSON-able dict (for `tunelab models info` and run records)."""
    pays, why = bf16_pays()
    return {
        "cpu": {**cpu_features(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count()},
        "cuda": cuda_info(),
        "bf16_pays": pays,
        "bf16_reason": why,
    }
