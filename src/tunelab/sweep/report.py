"""The sweep's report: the objective of every trial with the best so far, and which settings mattered.

Written to <run_dir>/sweep/: objective.png (each finished trial's objective, pruned trials at their last
intermediate value, and the best-so-far line), importance.png (Optuna's parameter importances, from its
default evaluator, once at least two trials are complete) and report.html, which shows both pictures and
a table of every trial. The pictures are PNG files so they open anywhere and embed in MLflow.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from ..io import atomic_open, write_text


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study (all processes' trials) as plain data, in trial order."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": dict(t.params),
                     "intermediate": len(t.intermediate_values), "last_intermediate": last,
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     "run_dir": t.user_attrs.get("run_dir")})
    return rows


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances, or {} when they cannot be estimated (fewer than two complete trials,
    or no parameter that varied)."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # e.g. every complete trial sampled the same values
        return {}


def _save_png(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_open(path, "wb", encoding=None) as f:
        f.write(buf.getvalue())


def _figure(width: float = 6.4, height: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def objective_plot(rows: list[dict[str, Any]], metric: str, maximize: bool, path: Path) -> None:
    fig, ax = _figure()
    done = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_intermediate"] is not None]
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], color="#1f77b4", label="complete", zorder=3)
    if pruned:
        ax.scatter([r["number"] for r in pruned], [r["last_intermediate"] for r in pruned], color="#aaaaaa",
                   marker="x", label="pruned (last intermediate)", zorder=3)
    best, xs, ys = None, [], []
    for r in done:
        if best is None or (r["value"] > best if maximize else r["value"] < best):
            best = r["value"]
        xs.append(r["number"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#d62728", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial ({'higher' if maximize else 'lower'} is better)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def importance_plot(values: dict[str, float], path: Path) -> None:
    names = list(values)[::-1]  # most important on top
    fig, ax = _figure(height=max(1.8, 0.45 * len(names) + 1))
    ax.barh(names, [values[n] for n in names], color="#2ca02c")
    ax.set_xlabel("importance (share of the objective's variance, Optuna's default evaluator)")
    ax.set_title("parameter importances")
    _save_png(fig, path)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def write_report(out_dir: Path, study: Any, *, metric: str, maximize: bool, title: str,
                 best: dict[str, Any] | None, dev: dict[str, Any]) -> dict[str, Any]:
    """Write objective.png, importance.png (when estimable) and report.html into out_dir; returns the
    files written and the importances."""
    rows = trial_rows(study)
    objective_plot(rows, metric, maximize, out_dir / "objective.png")
    files = {"report": str(out_dir / "report.html"), "objective_png": str(out_dir / "objective.png")}
    values = importances(study)
    if values:
        importance_plot(values, out_dir / "importance.png")
        files["importance_png"] = str(out_dir / "importance.png")
    keys = sorted({k for r in rows for k in r["params"]})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", metric, *keys, "intermediate values",
                                                            "seconds"])
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in [r["number"], r["state"], r["value"],
                                                          *[r["params"].get(k) for k in keys],
                                                          r["intermediate"], r["seconds"]]) + "</tr>"
        for r in rows)
    best_html = "<p>No trial has completed yet.</p>"
    if best is not None:
        settings = "".join(f"<li><code>{html.escape(k)}</code>: {_cell(v)}</li>" for k, v in best["params"].items())
        best_html = (f"<p>Best: trial {best['number']}, {html.escape(metric)} = {_cell(best['value'])}; its "
                     f"config: <code>{html.escape(str(best.get('config') or ''))}</code></p><ul>{settings}</ul>")
    imp_html = ("<h2>Parameter importances</h2><img src='importance.png' alt='parameter importances'>"
                + "<ul>" + "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in values.items()) + "</ul>"
                if values else "<p>Parameter importances need at least two complete trials that differ.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Objective: {html.escape(metric)} on the development split ({html.escape(str(dev.get('source')))},
{dev.get('dev_records')} records, sha256 {html.escape(str(dev.get('dev_sha256', ''))[:16])}), never on the
evaluation set.</p>
{best_html}
<h2>Objective per trial</h2><img src="objective.png" alt="objective per trial">
{imp_html}
<h2>Trials</h2><table><tr>{head}</tr>{body}</table>
</body></html>
"""
    write_text(out_dir / "report.html", page)
    return {"files": files, "importances": values}
