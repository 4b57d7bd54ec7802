"""A tunelab model run in-process as a backend: `local:MODEL` or `local:MODEL+ADAPTER_DIR`.

Conversations go through tunelab's batched Generator (the same engine `tunelab eval` decodes with),
rendered with the model's chat template. The model loads on the first call that needs it, so a run
whose every answer is already in the call cache never loads it.

Structured calls are decoded under a grammar (models/grammar.py): with `json_schema` each reply can only
be JSON matching its schema, and `json_mode` alone allows any JSON object, so a small model's reply
always parses. A bounded schema (llm/schema.py) also bounds the reply's length: the call then
generates at most the schema's token budget, never a long `max_tokens` of a looping model.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .schema import token_budget
from .spec import (
    GENERATION_ERROR,
    BackendSpec,
    Completion,
    Conversation,
    JsonSchemas,
    OnResult,
    schema_per_conversation,
)

OPTIONS = ("batch_size", "dtype", "device", "threads", "chat_template")
ANY_OBJECT: dict[str, Any] = {"type": "object"}  # what json_mode without a schema decodes under


class LocalBackend:
    """Generation with a local model (and optional PEFT adapter) through tunelab's Generator.

    `model_obj`/`tokenizer` may be given to reuse a model already in memory (then `model` is only
    its name for records and the cache)."""

    kind = "local"
    structured_output = "grammar"

    def __init__(
        self,
        model: str,
        adapter: str | Path | None = None,
        *,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        chat_template: bool = True,
        model_obj: Any = None,
        tokenizer: Any = None,
    ):
        if batch_size < 1:
            raise TunelabError(f"batch_size must be at least 1 (got {batch_size})")
        self.model = model
        self.adapter = Path(adapter).expanduser().resolve() if adapter else None
        if self.adapter is not None and not (self.adapter / "adapter_config.json").is_file():
            raise TunelabError(f"{self.adapter}: no adapter_config.json; is it an adapter directory?")
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.threads = threads
        self.chat_template = chat_template
        self.name = f"local:{model}" + (f"+{self.adapter}" if self.adapter else "")
        self._model, self._tokenizer = model_obj, tokenizer
        self._generator: Any = None
        self._lock = threading.Lock()  # one generation at a time: the model is not re-entrant
        self.adapter_report: dict[str, Any] | None = None

    def identity(self) -> dict[str, Any]:
        from ..models.loading import runtime_identity
        from ..models.registry import model_digest

        # The model's files by content, and the device kind and dtype it runs with: a model replaced under
        # the same name or path, or moved to another device or dtype, must miss the cache.
        ident: dict[str, Any] = {"kind": self.kind, "model": _model_id(self.model), "dtype": self.dtype,
                                 "chat_template": self.chat_template, "model_sha256": model_digest(self.model),
                                 "runtime": runtime_identity(self.dtype, self.device)}
        if self.adapter is not None:
            # The weights' hash, not just the path: retraining into the same directory must miss the cache.
            ident["adapter"] = str(self.adapter)
            ident["adapter_sha256"] = _adapter_digest(self.adapter)
        return ident

    def _load(self) -> Any:
        if self._generator is None:
            from ..models.generate import Generator

            if self._model is None:
                from ..models.adapters import load_with_adapter

                self._model, self._tokenizer, report = load_with_adapter(
                    self.model, self.adapter, dtype=self.dtype, device=self.device
                )
                self.adapter_report = report.to_dict() if report is not None else None
            self._generator = Generator(self._model, self._tokenizer, chat_template=self.chat_template,
                                        threads=self.threads)
        return self._generator

    def _generate(self, gen: Any, chunk: list[Conversation], cfg: Any,
                  schemas: list[dict[str, Any] | None]) -> list[Completion]:
        """Answers for one chunk; when the chunk fails (a prompt longer than the context), each item is
        tried alone so only the bad ones fail."""
        constrained = any(s is not None for s in schemas)
        try:
            return _answers(gen.generate(chunk, cfg, schemas=schemas if constrained else None))
        except TunelabError:
            pass  # length and schema checks fail before any decoding, so trying each alone costs little
        out = []
        for conv, schema in zip(chunk, schemas, strict=True):
            t0 = time.perf_counter()
            try:
                out.extend(_answers(gen.generate([conv], cfg, schemas=[schema] if schema is not None else None)))
            except TunelabError as exc:
                out.append(Completion.failure(GENERATION_ERROR, f"{self.name}: {exc}", time.perf_counter() - t0))
        return out

    def complete(
        self,
        conversations: Sequence[Conversation],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
        seed: int | None = None,
        json_mode: bool = False,
        on_result: OnResult | None = None,
        json_schema: JsonSchemas = None,
    ) -> list[Completion]:
        from ..models.generate import GenerationConfig

        if not conversations:
            return []
        schemas = schema_per_conversation(json_schema, len(conversations))
        if json_mode:
            schemas = [ANY_OBJECT if s is None else s for s in schemas]
        cfg = GenerationConfig(max_new_tokens=_budget(schemas, max_tokens), temperature=temperature,
                               stop=list(stop or []), seed=seed or 0, batch_size=self.batch_size)
        with self._lock:
            gen = self._load()
            results: list[Completion] = []
            # One batch at a time: answers reach on_result (and the cache, and a progress display) as
            # each batch is made, not only after several.
            step = self.batch_size
            for start in range(0, len(conversations), step):
                chunk = [list(c) for c in conversations[start : start + step]]
                for j, comp in enumerate(self._generate(gen, chunk, cfg, schemas[start : start + step])):
                    results.append(comp)
                    if on_result is not None:
                        on_result(start + j, comp)
        return results


def _budget(schemas: list[dict[str, Any] | None], max_tokens: int) -> int:
    """New tokens per reply: what the longest schema-bound reply can need, when every reply has a
    bounded schema (the grammar cannot run past it); `max_tokens` otherwise."""
    if not schemas or any(s is None for s in schemas):
        return max_tokens
    budgets = [token_budget(s) for s in schemas]
    if any(b is None for b in budgets):
        return max_tokens
    return max(budgets)  # type: ignore[type-var]


def _answers(outs: list[Any]) -> list[Completion]:
    return [Completion(text=o.text, finish_reason=o.finish_reason, latency_s=o.latency_s,
                       prompt_tokens=o.n_prompt_tokens, completion_tokens=o.n_new_tokens) for o in outs]


def _model_id(model: str) -> str:
    """A bundled name or hub id as given; a path made absolute, so `./m` and `/abs/m` share a cache."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _adapter_digest(adapter: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        file = adapter / name
        if file.is_file():
            h.update(name.encode())
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def build(spec: BackendSpec, **options: Any) -> LocalBackend:
    return LocalBackend(spec.model, spec.adapter, **options)
