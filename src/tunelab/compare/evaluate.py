"""Evaluate every variant of the matrix on one eval set, reusing cached predictions.

Each variant's outputs live in `<run_dir>/eval/<variant id>/` (predictions.jsonl, summary.json and
key.json). The key hashes everything the predictions depend on, by content: the variant, its trained
weights and the base model's files, the chat template's text, the device kind and dtype, the eval
records, the metrics, generation settings and judge, and for retrieval variants the index content,
top-k, context budget and prompt version. A variant whose key is unchanged is not evaluated again.

Models load once per (model, weights): the base model answers without and with retrieval, then the
adapter is applied on the same loaded weights for the tuned variants.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..data.records import Record
from ..errors import TunelabError
from ..io import atomic_dir, write_json, write_jsonl
from .variants import Variant, model_identity, stable_hash, training_config, weights_hash

KEY_FILE = "key.json"
Progress = Callable[[str, int, int], None]  # on_progress(task, done, total)
OUTPUT_KIND = "variant"  # the marker kind of <run_dir>/eval/<variant id> (tunelab.io.atomic_dir)


@dataclass
class VariantResult:
    variant: Variant
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    out_dir: Path
    cached: bool
    seconds: float = 0.0
    train: dict[str, Any] | None = None  # the tuned variant's training summary
    tune: dict[str, Any] | None = None  # how compare.tune chose the tuned variant's settings (its tune.json)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Retrieval:
    """What retrieval variants need: the index, the per-question hits and the prompt settings."""

    index: Any
    hits: list[list[Any]]  # per eval record, in rank order
    top_k: int
    context_tokens: int
    prompt_version: str
    index_hash: str
    template: str | None = None


def records_hash(records: list[Record]) -> str:
    return stable_hash([r.to_dict() | {"meta": None} for r in records])


def variant_key(config: ExperimentConfig, variant: Variant, records_digest: str, retrieval: Retrieval | None,
                labelled: bool = False) -> dict:
    """`labelled`: some eval records are labelled, so their answers are decoded under the label set's
    choice grammar (evaluate.runner.label_grammars); predictions made before that are not reused."""
    ev = config.eval
    key: dict[str, Any] = {
        "variant": variant.id,
        "weights": weights_hash(variant.weights),
        **model_identity(config, variant.model, _device(config)),  # base weights, template text, device, dtype
        "records": records_digest,
        "metrics": sorted(ev.metrics),
        "generation": {"max_new_tokens": ev.max_new_tokens, "batch_size": ev.batch_size},
        "judge": _judge_identity(config),
    }
    if labelled:
        key["generation"]["label_grammar"] = "choice"
    if variant.rag and retrieval is not None:
        key["retrieval"] = {"index": retrieval.index_hash, "top_k": retrieval.top_k,
                            "context_tokens": retrieval.context_tokens, "prompt": retrieval.prompt_version}
    return {"hash": stable_hash(key), **key}


def _judge_identity(config: ExperimentConfig) -> Any:
    # Masked before it is hashed: a password in the judge's URL does not change the key (the same model on
    # the same host and user scores the same; a rotated password must not re-judge everything), and key.json
    # then holds exactly what was hashed, never a hash of a password.
    from ..secrets import redact

    judge = getattr(config.eval, "judge", None)
    if judge is None or not hasattr(judge, "model_dump_json"):
        return judge
    ident = json.loads(judge.model_dump_json())
    from ..llm import parse_spec

    spec = parse_spec(judge.spec)
    if spec.kind == "local":  # its scores depend on the judge model's files, not only on its name
        from ..llm.local import LocalBackend

        ident["backend"] = LocalBackend(spec.model, spec.adapter).identity()  # as evaluate.judge builds it
    return redact(ident)


def cached_result(variant: Variant, out_dir: Path, key: dict) -> VariantResult | None:
    key_file, summary_file, pred_file = out_dir / KEY_FILE, out_dir / "summary.json", out_dir / "predictions.jsonl"
    if not (key_file.is_file() and summary_file.is_file() and pred_file.is_file()):
        return None
    try:
        if json.loads(key_file.read_text())["hash"] != key["hash"]:
            return None
        summary = json.loads(summary_file.read_text())
        rows = [json.loads(line) for line in pred_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache entry is recomputed, never trusted
    return VariantResult(variant, summary, rows, out_dir, cached=True)


def rag_records(records: list[Record], retrieval: Retrieval, tokenizer: Any) -> tuple[list[Record], list[list[Any]]]:
    """The eval records with the retrieved chunks inserted into the question turn, and per record the
    hits that fitted the context budget (the ones the model actually saw)."""
    from ..rag import build_rag_prompt

    out, used = [], []
    for rec, hits in zip(records, retrieval.hits, strict=True):
        prompt = build_rag_prompt(rec.prompt_messages(), hits[: retrieval.top_k], tokenizer,
                                  retrieval.context_tokens, template=retrieval.template)
        out.append(Record("chat", messages=prompt.messages + [{"role": "assistant", "content": rec.reference() or ""}],
                          meta=dict(rec.meta)))
        used.append(prompt.used)
    return out, used


def _load(config: ExperimentConfig, model_name: str, weights: Path | None, base: Any = None):
    """(model, tokenizer) for a variant; `base` is reused when the adapter sits on an already loaded model."""
    from ..models.loading import load_model
    from ..models.templates import stop_token_ids
    from ..train.run import load_tokenizer_for

    cfg = training_config(config, model_name)
    tokenizer = load_tokenizer_for(cfg)
    if weights is not None and not (weights / "adapter_config.json").is_file():
        if not (weights / "config.json").is_file():
            raise TunelabError(f"{weights}: neither a PEFT adapter (adapter_config.json) nor a model "
                               "(config.json); has training finished?")
        model = load_model(str(weights), dtype=config.model.dtype, device=_device(config))
    else:
        model = base if base is not None else load_model(model_name, dtype=config.model.dtype, device=_device(config))
        if weights is not None:
            model = apply_adapter(model, weights, model_name)
    stops = stop_token_ids(tokenizer)
    if stops:
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.eval()
    return model, tokenizer


def apply_adapter(model: Any, adapter: Path, model_name: str) -> Any:
    """The adapter on `model`, with the checks of models.adapters (a mismatched base or weights that
    load nowhere are errors, so a broken adapter never scores like the base model in the table)."""
    from ..models.adapters import apply_adapter as checked

    wrapped, report = checked(model, adapter, base_name=model_name)
    if not report.changes_outputs:
        import warnings

        warnings.warn(f"adapter {adapter} does not change the model's outputs: its tuned variants will score "
                      "like the base model", stacklevel=2)
    return wrapped


def _device(config: ExperimentConfig) -> str:
    from ..models.loading import resolve_device

    return resolve_device(config.model.device)  # the same choice training made for model.device


def evaluate_variant(config: ExperimentConfig, variant: Variant, model: Any, tokenizer: Any,
                     records: list[Record], out_dir: Path, key: dict, retrieval: Retrieval | None,
                     judge: Any = None, on_progress: Progress | None = None) -> VariantResult:
    from ..evaluate import run_eval
    from ..evaluate.runner import batch_counter
    from ..models.generate import GenerationConfig

    start = time.perf_counter()
    inputs, used = records, None
    if variant.rag and retrieval is not None:
        inputs, used = rag_records(records, retrieval, tokenizer)
    gen = GenerationConfig(max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size)
    result = run_eval(model, tokenizer, inputs, list(config.eval.metrics), None, gen,
                      model_name=variant.label, data=str(config.eval.data or config.data.eval or "eval split"),
                      on_batch=batch_counter(on_progress, f"eval {variant.label}", len(inputs)))
    rows = result.rows
    for row, rec in zip(rows, records, strict=True):
        messages = rec.prompt_messages()
        row["question"] = messages[-1]["content"] if messages else ""  # without any retrieved context
    if used is not None:
        for row, hits in zip(rows, used, strict=True):
            row["retrieved"] = [{"chunk_id": h.chunk_id, "doc": h.doc, "score": round(float(h.score), 4)}
                                for h in hits]
            row["contexts"] = [h.text for h in hits]  # what the judge checks faithfulness against
    summary = result.summary()
    if judge is not None:
        summary["judge"] = judge(rows, variant)
    summary["variant"] = {"id": variant.id, "label": variant.label, "model": variant.model, "kind": variant.kind,
                          "rag": variant.rag, "weights": str(variant.weights) if variant.weights else None}
    summary["files"] = {"predictions": "predictions.jsonl", "summary": "summary.json"}
    # predictions, summary and key are one set: written into a temporary directory that replaces the old
    # one whole, so a failure part way keeps the previous set and never pairs an old key with new rows
    with atomic_dir(out_dir, kind=OUTPUT_KIND) as tmp:
        write_jsonl(tmp / "predictions.jsonl", rows)
        write_json(tmp / "summary.json", summary)
        write_json(tmp / KEY_FILE, key)  # last: a cache entry counts only once everything is on disk
    return VariantResult(variant, summary, rows, out_dir, cached=False, seconds=time.perf_counter() - start)


def evaluate_matrix(config: ExperimentConfig, variants: list[Variant], records: list[Record],
                    retrieval: Retrieval | None, *, on_stage: Callable[[str], None] | None = None,
                    judge: Any = None, on_result: Callable[[VariantResult], None] | None = None,
                    on_progress: Progress | None = None) -> list[VariantResult]:
    """Every variant's summary and rows, evaluated or read from the cache, in matrix order;
    `on_progress(task, done, total)` is called as each evaluated variant's answers are generated."""
    stage = on_stage or (lambda _s: None)
    digest = records_hash(records)
    eval_root = Path(config.run_dir) / "eval"
    results: dict[str, VariantResult] = {}
    pending: list[tuple[Variant, dict]] = []
    for v in variants:
        key = variant_key(config, v, digest, retrieval, labelled=any(r.kind == "label" for r in records))
        hit = cached_result(v, eval_root / v.id, key)
        if hit is not None:
            results[v.id] = hit
        else:
            pending.append((v, key))
    # group by the weights to load: the base once per model, each adapter on top of it
    by_model: dict[str, list[tuple[Variant, dict]]] = {}
    for v, key in pending:
        by_model.setdefault(v.model, []).append((v, key))
    for model_name, items in by_model.items():
        base = None
        items.sort(key=lambda item: (item[0].weights is not None, str(item[0].weights), item[0].rag))
        loaded_for: tuple | None = None
        model = tokenizer = None
        for v, key in items:
            if loaded_for != (v.weights,):
                stage(f"eval: loading {v.label.replace(' + RAG', '')}")
                if v.weights is not None and base is not None and _is_adapter(v.weights):
                    base = _unwrap(model)
                model, tokenizer = _load(config, model_name, v.weights, base=base if _is_adapter(v.weights) else None)
                if v.weights is None:
                    base = model
                loaded_for = (v.weights,)
            stage(f"eval: {v.label} on {len(records)} questions")
            res = evaluate_variant(config, v, model, tokenizer, records, eval_root / v.id, key, retrieval, judge,
                                   on_progress)
            results[v.id] = res
            if on_result:
                on_result(res)
        del model, base
    return [results[v.id] for v in variants]


def _is_adapter(weights: Path | None) -> bool:
    return weights is not None and (weights / "adapter_config.json").is_file()


def _unwrap(model: Any) -> Any:
    """The plain base model under a PEFT wrapper (adapters removed), so the next adapter starts clean."""
    if hasattr(model, "unload") and hasattr(model, "peft_config"):
        return model.unload()
    return model
