"""The comparison table, the contrasts between variants, and the plain-language reading of both.

Uncertainty, stated with every number:
- a mean metric (ROUGE, token F1, exact match, judge scores) carries its standard error; a difference
  between two variants is paired (the same questions), so its 95% interval is mean(d) +- t se(d)
  over the n per-question differences d, with t Student's 0.975 quantile for n-1 degrees of freedom
  (2.26 at n = 10; 1.96 is its limit for large n), tighter than comparing the two intervals;
- a corpus metric (BLEU, chrF) carries a 95% bootstrap interval; two variants differ beyond
  uncertainty only when their intervals do not overlap (conservative: no paired resampling).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from ..evaluate.metrics.base import t_interval
from .comparison import Comparison, Contrast, fmt
from .evaluate import VariantResult
from .reading import read_comparison
from .variants import RAG_AWARE

# -- building -------------------------------------------------------------------------------------


def _metric_cells(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cells = dict(summary.get("metrics", {}))
    judge = summary.get("judge") or {}
    for name, value in (judge.get("metrics") or {}).items():
        cells[name] = value
    return cells


def _row(res: VariantResult) -> dict[str, Any]:
    s = res.summary
    t = s.get("timings", {})
    row: dict[str, Any] = {
        "variant": res.variant.label, "id": res.variant.id, "model": res.variant.model,
        "kind": res.variant.kind, "rag": res.variant.rag, "n": s.get("n"),
        "metrics": {name: {k: cell.get(k) for k in ("value", "stderr", "ci95", "higher_is_better", "aggregation",
                                                     "n_failed")
                           if k in cell}
                    for name, cell in _metric_cells(s).items()},
        "latency_p50_s": t.get("latency_p50_s"), "latency_p95_s": t.get("latency_p95_s"),
        "tokens_per_answer": t.get("tokens_per_answer"), "generation_tokens_per_s": t.get("tokens_per_s"),
        "prompt_tokens_mean": _mean([r.get("prompt_tokens") for r in res.rows]),
        "cached": res.cached,
    }
    if res.train:
        tr = res.train
        row["train"] = {k: tr.get(k) for k in ("train_seconds", "wall_seconds", "tokens_per_s", "peak_rss_mb",
                                               "trainable_params", "total_params", "status", "steps")}
        row["train"]["final_train_loss"] = tr.get("final_train_loss")
        row["train"]["final_val_loss"] = tr.get("final_val_loss")
        if tr.get("rag_context"):  # a RAG-aware variant: how its examples were rendered (compare.ragaware)
            row["train"]["rag_context"] = tr["rag_context"].get("train")
    if res.tune:
        row["tune"] = res.tune
    return row


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, int | float)]
    return round(sum(vals) / len(vals), 2) if vals else None


def _per_example(res: VariantResult, metric: str) -> np.ndarray | None:
    vals = [r.get(metric) for r in res.rows]
    if not vals or any(not isinstance(v, int | float) or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return np.asarray(vals, dtype=np.float64)


def contrast(a: VariantResult, b: VariantResult, metric: str, question: str) -> Contrast | None:
    """How a compares with b on `metric` (None when either lacks it)."""
    ca, cb = _metric_cells(a.summary).get(metric), _metric_cells(b.summary).get(metric)
    if not ca or not cb or ca.get("value") is None or cb.get("value") is None:
        return None
    higher = ca.get("higher_is_better", True)
    sign = 1.0 if higher else -1.0
    xa, xb = _per_example(a, metric), _per_example(b, metric)
    if ca.get("aggregation") == "mean" and xa is not None and xb is not None and len(xa) == len(xb) and len(xa) > 1:
        d = (xa - xb) * sign
        mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
        low, high = t_interval(mean, se, len(d))
        beyond = low > 0 or high < 0
        method = "paired, 95% interval of the per-question difference (t, n-1 degrees of freedom)"
    else:
        mean = (float(ca["value"]) - float(cb["value"])) * sign
        ia, ib = _interval(ca), _interval(cb)
        low = high = None
        beyond = ia is not None and ib is not None and (ia[0] > ib[1] or ib[0] > ia[1])
        method = "95% intervals do not overlap" if beyond else "95% intervals overlap"
    better, worse = (a, b) if mean >= 0 else (b, a)
    if mean < 0:
        mean, low, high = -mean, (None if high is None else -high), (None if low is None else -low)
    return Contrast(metric, better.variant.label, worse.variant.label, mean, low, high, beyond, method, question)


def _interval(cell: dict[str, Any]) -> tuple[float, float] | None:
    if cell.get("ci95"):
        return float(cell["ci95"][0]), float(cell["ci95"][1])
    n = cell.get("n", cell.get("n_scored"))  # judge metrics count the answers they scored
    if cell.get("stderr") is not None and n is not None and n >= 2:
        return t_interval(float(cell["value"]), float(cell["stderr"]), int(n))
    return None


def _contrasts(results: list[VariantResult], metrics: list[str]) -> list[Contrast]:
    by = {(r.variant.model, r.variant.kind, r.variant.rag): r for r in results}
    pairs = []
    for (model, kind, rag), res in by.items():
        if kind == "base":
            continue
        if (model, "base", rag) in by:
            pairs.append((res, by[(model, "base", rag)], "fine-tuning" + (" (both with retrieval)" if rag else "")))
        if not rag and (model, "base", True) in by:
            pairs.append((res, by[(model, "base", True)], "fine-tuning vs retrieval"))
        if rag and (model, kind, False) in by:
            pairs.append((res, by[(model, kind, False)], "retrieval on top of fine-tuning"))
        if kind == RAG_AWARE and (model, "tuned", rag) in by:
            pairs.append((res, by[(model, "tuned", rag)],
                          "RAG-aware tuning vs plain tuning" + (" (both with retrieval)" if rag else
                                                                " (both without retrieval)")))
    for (model, kind, rag), res in by.items():
        if kind == "base" and rag and (model, "base", False) in by:
            pairs.insert(0, (res, by[(model, "base", False)], "retrieval"))
    out = []
    for metric in metrics:
        for a, b, question in pairs:
            c = contrast(a, b, metric, question)
            if c is not None:
                out.append(c)
    return out


def _categories(results: list[VariantResult], metric: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for res in results:
        groups: dict[str, list[float]] = {}
        for row in res.rows:
            cat, val = row.get("category"), row.get(metric)
            if cat is not None and isinstance(val, int | float):
                groups.setdefault(str(cat), []).append(float(val))
        if groups:
            out[res.variant.label] = {c: round(sum(v) / len(v), 4) for c, v in sorted(groups.items())}
    return out


def build_comparison(results: list[VariantResult], metrics: list[str],
                     retrieval: dict[str, Any] | None = None) -> Comparison:
    names = list(metrics)
    for res in results:  # judge metrics join the table after the configured ones
        names += [m for m in _metric_cells(res.summary) if m not in names]
    primary = names[0]
    contrasts = _contrasts(results, names)
    comparison = Comparison(
        metrics=names, rows=[_row(r) for r in results], contrasts=contrasts,
        categories=_categories(results, primary), retrieval=retrieval, reading=[],
        n=int(results[0].summary.get("n", 0)) if results else 0, primary=primary,
    )
    comparison.reading = read_comparison(comparison)
    return comparison


# -- writing --------------------------------------------------------------------------------------


def cell_text(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("value") is None:
        return "-"
    text = fmt(cell["value"])
    if cell.get("stderr") is not None:
        text += f" ± {fmt(cell['stderr'])}"
    elif cell.get("ci95"):
        text += f" [{fmt(cell['ci95'][0])}, {fmt(cell['ci95'][1])}]"
    return text


def table_columns(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["variant", *comparison.metrics, "latency p50 s", "tokens/answer", "train s"]
    body = []
    for row in comparison.rows:
        train = row.get("train") or {}
        body.append([row["variant"], *[cell_text(row["metrics"].get(m)) for m in comparison.metrics],
                     fmt(row.get("latency_p50_s"), 3), fmt(row.get("tokens_per_answer"), 1),
                     fmt(train.get("train_seconds"), 1)])
    return header, body


def to_markdown(comparison: Comparison) -> str:
    header, body = table_columns(comparison)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    note = ("± is the standard error (mean metrics); [low, high] is a 95% bootstrap interval (corpus metrics). "
            f"n = {comparison.n} questions.")
    return "\n".join(lines) + "\n\n" + note + "\n\n" + "\n".join(f"- {s}" for s in comparison.reading) + "\n"


def to_csv(comparison: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["variant", "id", "model", "kind", "rag", "n"]
    metric_cols = [f"{m}{suffix}" for m in comparison.metrics for suffix in ("", "_stderr", "_ci_low", "_ci_high")]
    cost = ["latency_p50_s", "latency_p95_s", "tokens_per_answer", "prompt_tokens_mean", "train_seconds",
            "train_tokens_per_s", "train_peak_rss_mb"]
    writer.writerow(cols + metric_cols + cost)
    for row in comparison.rows:
        values: list[Any] = [row[c] for c in cols]
        for m in comparison.metrics:
            cell = row["metrics"].get(m) or {}
            ci = cell.get("ci95") or [None, None]
            values += [cell.get("value"), cell.get("stderr"), ci[0], ci[1]]
        train = row.get("train") or {}
        values += [row.get("latency_p50_s"), row.get("latency_p95_s"), row.get("tokens_per_answer"),
                   row.get("prompt_tokens_mean"), train.get("train_seconds"), train.get("tokens_per_s"),
                   train.get("peak_rss_mb")]
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def render_terminal(comparison: Comparison, console: Any) -> None:
    from rich.table import Table

    header, body = table_columns(comparison)
    table = Table(title=f"comparison on {comparison.n} held-out questions")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in body:
        table.add_row(*r)
    console.print(table)
    for sentence in comparison.reading:
        console.print(f"- {sentence}", highlight=False, markup=False)
