"""A small workdir as `tunelab run` leaves it, built with compare's own writers (no model runs):
`<workdir>/<name>/eval/<variant id>/{predictions.jsonl,summary.json}`, `compare/{comparison.json,
table.md,table.csv,report.html}`, and a tuned variant's `train/<model>/train_log.jsonl`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tunelab.compare.evaluate import VariantResult
from tunelab.compare.report import write_report
from tunelab.compare.table import build_comparison, to_csv, to_markdown
from tunelab.compare.variants import Variant
from tunelab.io import write_json, write_jsonl, write_text

QUESTIONS = ["What does the warranty cover?", "How long is the return window?", "Who signs the form?",
             "Where is the spare key?", "When is the office open?", "Which plan includes support?"]


def _variant_rows(kind: str, rag: bool, answers: list[str], judge: list[int] | None) -> list[dict]:
    rows = []
    for i, (question, answer) in enumerate(zip(QUESTIONS[: len(answers)], answers, strict=True)):
        row = {"index": i, "question": question, "reference": f"The handbook answer {i}.", "prediction": answer,
               "prompt": [{"role": "user", "content": question}], "prompt_tokens": 20,
               "category": "policy" if i % 2 else "office", "rougeL": 0.1 + 0.1 * (i % 3) + (0.2 if kind == "tuned" else 0)}
        if judge is not None:
            row["judge_accuracy"] = judge[i]
        if rag:
            row["contexts"] = [f"Passage {i} from the handbook.", "A second passage."]
            row["retrieved"] = [{"chunk_id": f"c{i}", "doc": "handbook.md", "score": 0.9},
                                {"chunk_id": "c99", "doc": "faq.md", "score": 0.5}]
        rows.append(row)
    return rows


def build_workdir(root: Path, name: str = "exp", *, answers: dict[str, list[str]] | None = None,
                  judged: bool = True, question: str | None = None) -> Path:
    """Write one experiment into `root` and return its run directory. `answers`: per variant kind
    ("base", "base_rag", "tuned") the answers to the questions; `question` replaces the first question."""
    run_dir = root / name
    weights = run_dir / "train" / "tiny-model"
    weights.mkdir(parents=True, exist_ok=True)
    write_jsonl(weights / "train_log.jsonl", [{"step": s, "loss": 2.0 / s} for s in range(1, 6)]
                + [{"event": "eval", "step": 5, "val_loss": 0.7}])
    n = len(QUESTIONS)
    answers = answers or {"base": [f"Base answer {i}." for i in range(n)],
                          "base_rag": [f"Grounded answer {i}." for i in range(n)],
                          "tuned": [f"Tuned answer {i}." for i in range(n)]}
    judge = {"base": [2, 3, 2, 1, 3, 2], "base_rag": [4, 3, 4, 4, 2, 3], "tuned": [5, 4, 3, 4, 5, 5]}
    results = []
    for key, (kind, rag) in {"base": ("base", False), "base_rag": ("base", True), "tuned": ("tuned", False)}.items():
        variant = Variant("tiny-model", kind, rag, weights if kind == "tuned" else None)
        rows = _variant_rows(kind, rag, answers[key], judge[key] if judged else None)
        if question is not None:
            rows[0]["question"] = question
            rows[0]["prompt"] = [{"role": "user", "content": question}]
        scores = [r["rougeL"] for r in rows]
        summary = {"n": len(rows), "metrics": {"rougeL": {
            "value": float(np.mean(scores)), "stderr": float(np.std(scores, ddof=1) / math.sqrt(len(scores))),
            "aggregation": "mean", "higher_is_better": True}},
            "timings": {"latency_p50_s": 0.4, "latency_p95_s": 0.9, "tokens_per_answer": 12.0},
            "variant": {"id": variant.id, "label": variant.label, "model": variant.model, "kind": kind,
                        "rag": rag, "weights": str(weights) if kind == "tuned" else None}}
        eval_dir = run_dir / "eval" / variant.id
        eval_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(eval_dir / "predictions.jsonl", rows)
        write_json(eval_dir / "summary.json", summary)
        results.append(VariantResult(variant, summary, rows, eval_dir, cached=False))
    comparison = build_comparison(results, ["rougeL"], None)
    out = run_dir / "compare"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", comparison.to_dict())
    write_text(out / "table.md", to_markdown(comparison))
    write_text(out / "table.csv", to_csv(comparison))
    write_report(out / "report.html", comparison, title=f"tunelab comparison: {name}", train_logs={},
                 samples=[], config={"name": name}, meta={})
    return run_dir
