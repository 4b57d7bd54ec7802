"""The HTML report of a comparison: one self-contained file that opens in a browser with no network.

Plots are drawn with matplotlib into inline SVG (no CDN, no JavaScript). Sections: the reading, the
table, metric bars per variant with their uncertainty, training loss curves, the per-category
breakdown, retrieval quality, the cost side (training time, tokens/s, peak memory, latency p50/p95,
tokens per answer), sample answers side by side, and the resolved config (secrets redacted).
"""

from __future__ import annotations

import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .comparison import Comparison, fmt
from .reading import settings_text
from .table import cell_text, table_columns

SECTIONS = ("Reading", "Comparison table", "Metrics", "Training loss", "Per category", "Retrieval",
            "General ability", "Cost", "Sample answers", "Config")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .6rem;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f5f5f5}
.muted{color:#666;font-size:.85rem}.plots{display:flex;flex-wrap:wrap;gap:1rem}.plots svg{max-width:520px;
height:auto}pre{background:#f7f7f7;padding:.8rem;overflow:auto;font-size:.8rem}.qa td{text-align:left;
vertical-align:top;max-width:320px}
"""


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg"):]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _figure(width: float = 6.4, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, selectable labels
    return plt.subplots(figsize=(width, height))


def metric_bars(comparison: Comparison, metric: str) -> str | None:
    labels, values, low, high = [], [], [], []
    for row in comparison.rows:
        cell = row["metrics"].get(metric)
        if not cell or cell.get("value") is None:
            continue
        v = float(cell["value"])
        if cell.get("stderr") is not None:
            lo = hi = 1.959964 * float(cell["stderr"])
        elif cell.get("ci95"):
            lo, hi = max(0.0, v - float(cell["ci95"][0])), max(0.0, float(cell["ci95"][1]) - v)
        else:
            lo = hi = 0.0
        labels.append(row["variant"])
        values.append(v)
        low.append(lo)
        high.append(hi)
    if not values:
        return None
    fig, ax = _figure(6.4, 0.5 + 0.45 * len(values))
    ys = list(range(len(values)))[::-1]
    colors = ["#8da0cb" if "RAG" in label else "#66c2a5" for label in labels]
    ax.barh(ys, values, xerr=[low, high], color=colors, capsize=3)
    ax.set_yticks(ys, labels)
    ax.set_xlabel(f"{metric} (error bars: 95% interval)")
    ax.set_title(metric)
    return _svg(fig)


def loss_curves(train_logs: dict[str, list[dict[str, Any]]]) -> str | None:
    if not any(train_logs.values()):
        return None
    fig, ax = _figure()
    for label, rows in train_logs.items():
        # staged runs restart `step` in each stage; global_step runs on across them
        steps = [(r.get("global_step", r["step"]), r["loss"]) for r in rows if r.get("event") is None and "loss" in r]
        evals = [(r.get("global_step", r["step"]), r["val_loss"]) for r in rows
                 if r.get("event") == "eval" and "val_loss" in r]
        if steps:
            ax.plot(*zip(*steps, strict=True), label=f"{label} train", linewidth=1)
        if evals:
            ax.plot(*zip(*evals, strict=True), "o--", label=f"{label} validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over loss tokens)")
    ax.legend(fontsize=7)
    return _svg(fig)


def cost_bars(comparison: Comparison) -> str | None:
    rows = [r for r in comparison.rows if r.get("latency_p50_s") is not None]
    if not rows:
        return None
    fig, ax = _figure(6.4, 0.5 + 0.45 * len(rows))
    ys = list(range(len(rows)))[::-1]
    p50 = [r["latency_p50_s"] for r in rows]
    p95 = [max(0.0, (r.get("latency_p95_s") or r["latency_p50_s"]) - r["latency_p50_s"]) for r in rows]
    ax.barh(ys, p50, xerr=[[0] * len(rows), p95], color="#fc8d62", capsize=3)
    ax.set_yticks(ys, [r["variant"] for r in rows])
    ax.set_xlabel("latency per answer, s (bar p50, whisker p95; batched generation)")
    return _svg(fig)


def _table(header: list[str], body: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _categories_html(comparison: Comparison) -> str:
    if not comparison.categories:
        return '<p class="muted">The eval set has no category field.</p>'
    cats = sorted({c for per in comparison.categories.values() for c in per})
    body = [[label, *[fmt(per.get(c)) for c in cats]] for label, per in comparison.categories.items()]
    return (f"<p>Mean {html.escape(comparison.primary)} per question category.</p>"
            + _table(["variant", *cats], body))


def _retrieval_html(comparison: Comparison) -> str:
    r = comparison.retrieval
    if not r:
        return '<p class="muted">No retrieval variants in this comparison.</p>'
    body = [[k, cell_text(v) if isinstance(v, dict) else fmt(v)] for k, v in r.items()
            if k.startswith(("recall@", "mrr"))]
    info = {k: v for k, v in r.items() if not k.startswith(("recall@", "mrr"))}
    return (_table(["measure", "value"], body)
            + f'<p class="muted">{html.escape(json.dumps(info, default=str))}</p>')


def _tune_html(comparison: Comparison) -> str:
    """The searches behind the tuned variants (compare.tune), next to the table they explain."""
    rows = [r for r in comparison.rows if r.get("tune") and not r["rag"]]
    if not rows:
        return ""
    body = []
    for row in rows:
        t = row["tune"]
        body.append([row["variant"], f"{t['trials']} ({t['complete']} complete, {t['pruned']} pruned)",
                     f"{t['metric']} ({t.get('direction', '')})", fmt(t["best_value"]),
                     settings_text(t["best_params"]),
                     t.get("report") or "-"])
    return ("<p>How the tuned variants were chosen (compare.tune): a search scored on a development split of "
            "the training data, never on these held-out questions.</p>"
            + _table(["variant", "trials", "objective", "best dev value", "chosen settings", "search report"], body))


def _forgetting_html(comparison: Comparison) -> str:
    forgetting = comparison.extra.get("forgetting")
    if not forgetting:
        return ('<p class="muted">No forgetting check in this run: set eval.baseline (or eval.benchmarks) to score '
                "each tuned adapter against its base model on general benchmarks.</p>")
    body = [[label, r["benchmark"], r["metric"], fmt(r["base"]), fmt(r["tuned"]), fmt(r["change"]),
             "-" if r.get("ci_low") is None else f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", r["verdict"]]
            for label, rows in forgetting.items() for r in rows]
    return _table(["variant", "benchmark", "metric", "base", "tuned", "change", "95% interval (paired)", "verdict"],
                  body)


def _cost_html(comparison: Comparison) -> str:
    header = ["variant", "train s", "train tokens/s", "peak memory MB", "latency p50 s", "latency p95 s",
              "tokens/answer", "prompt tokens"]
    body = []
    for row in comparison.rows:
        t = row.get("train") or {}
        body.append([row["variant"], fmt(t.get("train_seconds"), 1), fmt(t.get("tokens_per_s"), 1),
                     fmt(t.get("peak_rss_mb"), 0), fmt(row.get("latency_p50_s"), 3), fmt(row.get("latency_p95_s"), 3),
                     fmt(row.get("tokens_per_answer"), 1), fmt(row.get("prompt_tokens_mean"), 1)])
    plot = cost_bars(comparison) or ""
    return _table(header, body) + f'<div class="plots">{plot}</div>'


def _samples_html(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return ""
    variants = [k for k in samples[0] if k not in ("question", "reference")]
    body = [[s["question"], s["reference"], *[s.get(v, "") for v in variants]] for s in samples]
    return _table(["question", "reference", *variants], body, "qa")


def write_report(path: Path, comparison: Comparison, *, title: str, train_logs: dict[str, list[dict[str, Any]]],
                 samples: list[dict[str, Any]], config: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Render the report to `path` (atomically) and return it."""
    from ..io import write_text
    from ..track.redact import redact

    header, body = table_columns(comparison)
    metric_plots = "".join(p for p in (metric_bars(comparison, m) for m in comparison.metrics) if p)
    loss = loss_curves(train_logs)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{html.escape(" · ".join(f"{k}: {v}" for k, v in meta.items() if v is not None))}</p>',
        "<h2>Reading</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in comparison.reading) + "</ul>",
        "<h2>Comparison table</h2>" + _table(header, body)
        + f'<p class="muted">n = {comparison.n} held-out questions. ± is the standard error of a mean metric; '
          "[low, high] is a 95% bootstrap interval of a corpus metric.</p>" + _tune_html(comparison),
        f'<h2>Metrics</h2><div class="plots">{metric_plots}</div>',
        "<h2>Training loss</h2>" + (f'<div class="plots">{loss}</div>' if loss
                                    else '<p class="muted">No tuned variant was trained in this run.</p>'),
        "<h2>Per category</h2>" + _categories_html(comparison),
        "<h2>Retrieval</h2>" + _retrieval_html(comparison),
        "<h2>General ability</h2>" + _forgetting_html(comparison),
        "<h2>Cost</h2>" + _cost_html(comparison),
        "<h2>Sample answers</h2>" + _samples_html(samples),
        "<h2>Config</h2><pre>" + html.escape(json.dumps(redact(config), indent=2, default=str)) + "</pre>",
    ]
    created = datetime.now(UTC).isoformat(timespec="seconds")
    doc = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{_CSS}</style></head><body>{''.join(parts)}"
           f'<p class="muted">written by tunelab at {created}</p></body></html>')
    write_text(path, doc)
    return path
