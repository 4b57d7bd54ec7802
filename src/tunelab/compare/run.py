"""`run(config) -> CompareResult`: evaluate the comparison matrix and write the table and the report.

Inputs: the experiment config, and the tuned variants' training summaries (when the main job trained
them; otherwise they are read from `<run_dir>/train/<model>/summary.json` when present) and, with
compare.tune, how their settings were searched (`<run_dir>/train/<model>/tune.json`). Outputs, in
`<run_dir>/compare/`: table.md, table.csv, comparison.json, report.html; and per variant
`<run_dir>/eval/<variant>/` (predictions, summary, cache key).
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
from ..io import atomic_dir, write_json, write_text
from .comparison import Comparison
from .evaluate import Retrieval, VariantResult, evaluate_matrix
from .table import build_comparison, to_csv, to_markdown
from .variants import Variant, build_matrix, file_hash, rag_enabled, stable_hash

RETRIEVAL_KS = (1, 3, 5)
OUTPUT_KIND = "compare"  # the marker kind of <run_dir>/compare (tunelab.io.atomic_dir)
TUNE_FILE = "tune.json"  # in a tuned variant's run dir: how compare.tune chose its settings (pipeline writes it)


@dataclass
class CompareResult:
    out_dir: Path
    comparison: Comparison
    results: list[VariantResult]
    files: dict[str, str]
    seconds: float
    cached: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "files": self.files, "seconds": round(self.seconds, 1),
                "cached_variants": self.cached, "comparison": self.comparison.to_dict()}


def eval_records(config: ExperimentConfig) -> tuple[list[Record], str]:
    """The held-out questions: the prepared eval split (cleaned, PII-masked, leak-checked) when
    data.eval is set, else eval.data read as given, else the prepared test split."""
    from ..data.prepare import load_split
    from ..evaluate import load_eval_records

    data_dir = Path(config.run_dir) / "data"
    if config.eval.data is not None:
        records, name = load_eval_records(config.eval.data), str(config.eval.data)
    elif (data_dir / "eval.jsonl").is_file():
        records, name = load_split(data_dir, "eval"), f"{config.data.eval} (prepared eval split)"
    elif (data_dir / "test.jsonl").is_file():
        records, name = load_split(data_dir, "test"), "prepared test split"
    else:
        raise TunelabError("no eval set: set data.eval (a held-out file), eval.data, or a test split "
                           "(data.split.test > 0)")
    if config.eval.limit:
        records = records[: config.eval.limit]
    if not records:
        raise TunelabError(f"the eval set {name} is empty")
    return records, name


def _question(rec: Record) -> str:
    messages = rec.prompt_messages()
    return str(messages[-1].get("content", "")) if messages else ""


def setup_retrieval(config: ExperimentConfig, records: list[Record],
                    stage: Callable[[str], None]) -> tuple[Retrieval | None, dict[str, Any] | None]:
    if not rag_enabled(config):
        return None, None
    if config.rag.docs is None:
        raise TunelabError("compare.rag is 'on' but rag.docs is not set: name the documents directory to retrieve from")
    from ..rag import RAG_PROMPT_VERSION, build_index, index_dir_for, load_index, retrieval_metrics

    index_dir = index_dir_for(config)
    stage(f"rag: indexing {config.rag.docs}")
    built = build_index(config.rag.docs, index_dir, config.rag)
    index = load_index(index_dir)
    stage(f"rag: retrieving for {len(records)} questions")
    k = max(config.rag.top_k, *RETRIEVAL_KS)
    hits = index.search([_question(r) for r in records], k)
    gold = [r.meta.get("source") for r in records]
    quality = None
    if all(isinstance(g, str) and g for g in gold):  # recall needs every question's source document
        quality = {name: mv.to_dict() for name, mv in retrieval_metrics(hits, gold, ks=RETRIEVAL_KS).items()}
    manifest = index.manifest
    template = config.rag.prompt_template
    version = RAG_PROMPT_VERSION if template is None else f"custom-{file_hash(Path(template))}"
    content = {k: manifest.get(k) for k in ("embedder", "chunking", "files")}  # not its creation time
    retrieval = Retrieval(index=index, hits=hits, top_k=config.rag.top_k, context_tokens=config.rag.context_tokens,
                          prompt_version=version, index_hash=stable_hash(content),
                          template=str(template) if template else None)
    info = dict(quality or {})
    info.update({"index": str(index_dir), "top_k": config.rag.top_k, "chunks": manifest.get("n_chunks"),
                 "embedding_model": config.rag.embedding_model,
                 "index_update": getattr(built, "to_dict", lambda: None)()})
    return retrieval, info


def _weights_json(variant: Variant, name: str) -> dict[str, Any] | None:
    """A JSON file next to a tuned variant's weights (its training summary, its tune record), or None."""
    if variant.weights is None:
        return None
    path = variant.weights / name
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _samples(results: list[VariantResult], n: int = 5) -> list[dict[str, Any]]:
    """The first n questions with every variant's answer; the question is read from a variant without
    retrieval, whose prompt is the plain question."""
    plain = next((r for r in results if not r.variant.rag), None)
    if plain is None:
        return []
    out = []
    for i in range(min(n, len(plain.rows))):
        prompt = plain.rows[i].get("prompt") or []
        question = prompt[-1]["content"] if isinstance(prompt, list) and prompt else str(prompt)
        sample = {"question": question, "reference": plain.rows[i].get("reference", "")}
        sample.update({res.variant.label: res.rows[i].get("prediction", "") for res in results})
        out.append(sample)
    return out


def judge_for(config: ExperimentConfig, on_progress: Callable[[str, int, int], None] | None = None,
              ) -> Callable[[list[dict[str, Any]], Variant], dict[str, Any]] | None:
    """The configured LLM judge as `judge(rows, variant) -> summary`: accuracy and relevance for every
    variant, faithfulness to the retrieved context for retrieval variants; rows get per-row scores.
    `on_progress` gets each variant's judgements as task "judge VARIANT"."""
    cfg = config.eval.judge
    if cfg is None:
        return None
    from ..evaluate.judge import judge_backend
    from ..evaluate.run import judge_rows

    backend = judge_backend(cfg)

    def judge(rows: list[dict[str, Any]], variant: Variant) -> dict[str, Any]:
        # the same scoring as `tunelab eval --judge`: failures counted, a judge that scores nothing an error
        return judge_rows(rows, backend, with_context=variant.rag, retries=cfg.parse_retries,
                          what=f"variant {variant.label}", on_progress=on_progress,
                          task=f"judge {variant.label}").to_dict()

    return judge


def run(config: ExperimentConfig, *, on_stage: Callable[[str], None] | None = None,
        judge: Any = None, on_progress: Callable[[str, int, int], None] | None = None) -> CompareResult:
    """`on_progress(task, done, total)` is called as each variant's answers are generated and judged and
    as the forgetting check scores its benchmarks."""
    stage = on_stage or (lambda _s: None)
    judge = judge or judge_for(config, on_progress)
    start = time.perf_counter()
    variants = build_matrix(config)
    missing = [v for v in variants if v.weights is not None and not v.weights.exists()]
    if missing:
        raise TunelabError("no trained weights for: " + ", ".join(f"{v.label} ({v.weights})" for v in missing)
                           + "; run `tunelab run CONFIG` to train them, or fix compare.extra")
    records, data_name = eval_records(config)
    retrieval, retrieval_info = setup_retrieval(config, records, stage)

    results = evaluate_matrix(config, variants, records, retrieval, on_stage=stage, judge=judge,
                              on_progress=on_progress)
    for res in results:
        res.train = _weights_json(res.variant, "summary.json") if res.variant.tuned else None
        if config.compare.tune is not None and res.variant.kind == "tuned":
            res.tune = _weights_json(res.variant, TUNE_FILE)
    comparison = build_comparison(results, list(config.eval.metrics), retrieval_info)
    comparison.extra["eval_data"] = data_name
    from .forgetting import run_checks

    forgetting = run_checks(config, variants, stage, on_progress)
    if forgetting:
        comparison.extra["forgetting"] = forgetting
        comparison.reading += _forgetting_sentences(forgetting)
    out_dir = Path(config.run_dir) / "compare"
    files = {"markdown": str(out_dir / "table.md"), "csv": str(out_dir / "table.csv"),
             "json": str(out_dir / "comparison.json"), "report": str(out_dir / "report.html")}
    from .report import write_report

    train_logs = {r.variant.label: _train_log(r.variant.weights) for r in results
                  if r.variant.tuned and not r.variant.rag and r.variant.weights is not None}
    meta = {"eval set": data_name, "questions": comparison.n,
            "models": ", ".join(dict.fromkeys(v.model for v in variants))}
    # the four files are one set: built in a temporary directory that replaces the old set whole, so a
    # failure part way leaves the previous table, CSV, JSON and report together, never a mix
    with atomic_dir(out_dir, kind=OUTPUT_KIND) as tmp:
        write_text(tmp / "table.md", to_markdown(comparison))
        write_text(tmp / "table.csv", to_csv(comparison))
        write_json(tmp / "comparison.json", comparison.to_dict())
        stage("report: writing the HTML report")
        write_report(tmp / "report.html", comparison, title=f"tunelab comparison: {config.name}",
                     train_logs={k: v for k, v in train_logs.items() if v}, samples=_samples(results),
                     config=config.resolved(), meta=meta)
    return CompareResult(out_dir, comparison, results, files, time.perf_counter() - start,
                         cached=[r.variant.id for r in results if r.cached])


def _forgetting_sentences(forgetting: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = []
    for label, rows in forgetting.items():
        worse = [r for r in rows if r.get("verdict") == "worse"]
        parts = ", ".join(f"{r['benchmark']} {r['metric']} {r['base']:.3f} -> {r['tuned']:.3f}" for r in rows)
        verdict = ("lost general ability beyond the noise (95% interval of the paired change below 0) on "
                   + ", ".join(f"{r['benchmark']} {r['metric']}" for r in worse)
                   if worse else "shows no loss of general ability beyond the noise (95% intervals of the paired change)")
        out.append(f"Forgetting check: {label} {verdict} ({parts}).")
    return out


def _train_log(weights: Path) -> list[dict[str, Any]]:
    path = weights / "train_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def track_variant(tracker: Any, config: ExperimentConfig, res: VariantResult, dataset_hash: str,
                  parent: str | None = None) -> None:
    """One MLflow eval run for a freshly evaluated variant: its metrics, cost and predictions."""
    v = res.variant
    tags = {"variant": v.id, "base_model": v.model, "variant_kind": v.kind, "rag": str(v.rag),
            "dataset_hash": dataset_hash}
    with tracker.run("eval", name=f"eval {v.label}", tags=tags, parent=parent) as run:
        metrics = {name: cell["value"] for name, cell in res.summary.get("metrics", {}).items()
                   if isinstance(cell, dict) and cell.get("value") is not None}
        for name, cell in (res.summary.get("judge") or {}).get("metrics", {}).items():
            if isinstance(cell, dict) and cell.get("value") is not None:
                metrics[name] = cell["value"]
        timings = res.summary.get("timings", {})
        metrics.update({k: timings[k] for k in ("latency_p50_s", "latency_p95_s", "tokens_per_answer")
                        if timings.get(k) is not None})
        run.log_metrics(metrics)
        run.log_artifacts(res.out_dir, artifact_path="eval")
