"""The serving engines by name, what each needs and can do, and `load_engine`.

    engine = load_engine("transformers", "smollm2-135m-instruct", {"support": Path("runs/support")})
    stream = engine.submit(GenerationRequest("support", engine.render_chat(messages), max_tokens=128))
    for delta in stream: print(delta.text, end="")

- transformers: tunelab's own model loading, continuous batching (serve.batching), LoRA adapters mixed in
  one batch on one base. CPU or GPU.
- llama.cpp: a GGUF file on the CPU through the llama-cpp-python binding (serve.llamacpp); one request at
  a time per model; adapters as GGUF LoRA files, each on its own memory-mapped copy of the base.
- vllm: a GPU server engine (serve.vllm_engine) with its own continuous batching and multi-LoRA (LoRARequest
  per adapter).
The optional engines are imported only when asked for, and say how to install what they miss.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .engine import Engine


@dataclass(frozen=True)
class EngineKind:
    name: str
    summary: str
    module: str | None  # the Python module it needs (None: tunelab's own dependencies)
    install: str | None  # how to get it
    needs: str  # the hardware it runs on
    adapters: bool  # serves adapters
    mixed_batches: bool  # requests for different adapters share one forward pass
    continuous_batching: bool
    loader: Callable[..., Engine]

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def require(self) -> None:
        if not self.available():
            raise TunelabError(f"engine '{self.name}' needs the Python package '{self.module}', which is not "
                               f"installed: {self.install} (or use --engine transformers)")

    def facts(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "needs": self.needs, "available": self.available(),
                "install": self.install, "adapters": self.adapters, "mixed_batches": self.mixed_batches,
                "continuous_batching": self.continuous_batching}


def _transformers(base: str, adapters: dict[str, Path], **kw: Any) -> Engine:
    from .batching import load_transformers_engine

    return load_transformers_engine(base, adapters, **kw)


def _llamacpp(base: str, adapters: dict[str, Path], **kw: Any) -> Engine:
    from .llamacpp import load_llamacpp_engine

    return load_llamacpp_engine(base, adapters, **kw)


def _vllm(base: str, adapters: dict[str, Path], **kw: Any) -> Engine:
    from .vllm_engine import load_vllm_engine

    return load_vllm_engine(base, adapters, **kw)


ENGINES: dict[str, EngineKind] = {
    "transformers": EngineKind(
        "transformers", "tunelab's own engine: continuous batching, LoRA adapters mixed in one batch", None, None,
        "CPU or a CUDA GPU", True, True, True, _transformers),
    "llama.cpp": EngineKind(
        "llama.cpp", "a GGUF file through llama-cpp-python, one request at a time", "llama_cpp",
        "pip install llama-cpp-python", "CPU", True, False, False, _llamacpp),
    "vllm": EngineKind(
        "vllm", "vLLM: paged attention, continuous batching, multi-LoRA", "vllm", "pip install vllm",
        "a CUDA GPU", True, True, True, _vllm),
}


def engine_kind(kind: str) -> EngineKind:
    found = ENGINES.get((kind or "").strip().lower())
    if found is None:
        raise TunelabError(f"unknown engine '{kind}'; use one of {', '.join(ENGINES)}")
    return found


def load_engine(kind: str, base: str, adapters: dict[str, Path], *, device: str = "auto", max_batch: int = 32,
                dtype: str = "auto") -> Engine:
    """The engine `kind` serving `base` (anything tunelab.models resolves) and `adapters` (served name -> a
    training run directory or an adapter directory). max_batch=1 serves one request at a time."""
    entry = engine_kind(kind)
    entry.require()
    if max_batch < 1:
        raise TunelabError(f"max_batch must be at least 1 (got {max_batch})")
    return entry.loader(base, dict(adapters or {}), device=device, max_batch=max_batch, dtype=dtype)
