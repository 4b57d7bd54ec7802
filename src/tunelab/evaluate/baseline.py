"""The forgetting check: the base model and the tuned one on the same benchmark slice, side by side.

    peft_model, tokenizer, report = load_with_adapter("smollm2-135m-instruct", Path("runs/exp/train"))
    result = run_baseline(peft_model, tokenizer, ["hellaswag", "truthfulqa_mc1"], limit=100)
    result["changes"]     # per benchmark metric: base, tuned, change, its 95% interval, verdict
    result["forgetting"]  # True when some metric got worse beyond its 95% interval

CLI: `tunelab eval --adapter DIR --baseline [--benchmark NAMES] [--limit N] [--benchmark-path NAME=FILE]`.

Why this way:
- One model in memory: the adapter is applied once and the base model is scored inside PEFT's
  `disable_adapter()`, so base and tuned see identical weights, items, batch size and padding (the
  settings scores move with); only the adapter differs.
- The default slice is hellaswag + truthfulqa_mc1, the first 100 items of each: general
  commonsense completion and resistance to imitating falsehoods, the abilities domain fine-tuning
  most often erodes. Their data files come from where every benchmark's do (evaluate.benchmarks.registry:
  a file or directory the user names, $TUNELAB_BENCHMARK_DIR, tunelab's cache, the Hugging Face hub).
  It is a quick check (two models x ~870 scored continuations, minutes on a laptop CPU); raise --limit
  for a finer one (the whole sets: 10042 and 817 items).
- The verdict uses the same 95% level as the comparison table, and the same kind of interval: base and
  tuned are scored on the same items, so change = tuned - base is the mean of the per-item differences
  d, and its interval is mean(d) +- t(0.975, n-1) se(d) (Student's t, not 1.96: at n = 10 the normal
  quantile would make the interval 13% too narrow). Worse / better when the interval excludes 0.
  Without per-item scores (only two summaries) the interval is change +- t(0.975, n-1) x the combined
  standard error sqrt(se_base^2 + se_tuned^2) of two independent means, which ignores the pairing and
  is wider (conservative).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import write_json
from .benchmarks.base import mean_and_stderr
from .benchmarks.run import items_file, run_benchmarks
from .metrics.base import LEVEL, t_interval

DEFAULT_BENCHMARKS = ("hellaswag", "truthfulqa_mc1")
DEFAULT_LIMIT = 100
BASELINE_FILE = "baseline.json"
RULE = (f"change = tuned - base on the same items; worse/better when the {LEVEL:.0%} interval of the change "
        "excludes 0: paired, mean(d) +- t(n-1) x stderr_paired of the per-item differences d (unpaired, "
        "change +- t(n-1) x stderr_combined, when per-item scores are missing)")


def run_baseline(
    model: Any,
    tokenizer: Any,
    names: Sequence[str] = DEFAULT_BENCHMARKS,
    *,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 32,
    benchmark_dir: str | Path | None = None,
    paths: Mapping[str, str | Path] | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Score `model` (a PEFT model) with its adapter off, then on; per-metric changes and the flag.

    `paths` maps a benchmark name to its data file (see run_benchmarks). With `out_dir`: base/ and tuned/ hold each run's per-item files and summary, and baseline.json
    the comparison (atomic writes)."""
    if not hasattr(model, "disable_adapter"):
        raise TunelabError("the forgetting check compares a model with its adapter on and off: give --adapter")
    names = list(dict.fromkeys(names))
    with tempfile.TemporaryDirectory(prefix="tunelab-baseline-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        common = {"limit": limit, "batch_size": batch_size, "benchmark_dir": benchmark_dir, "paths": paths}
        with model.disable_adapter():
            base = run_benchmarks(model, tokenizer, names, out_dir=root / "base",
                                  progress=_tagged(progress, "base"), **common)
        tuned = run_benchmarks(model, tokenizer, names, out_dir=root / "tuned",
                               progress=_tagged(progress, "tuned"), **common)
        changes = compare(base, tuned, _item_scores(root / "base", names), _item_scores(root / "tuned", names))
    if out_dir is None:  # the per-item files were only needed for the paired errors, and are gone
        base.pop("files", None)
        tuned.pop("files", None)
    result = {
        "benchmarks": names,
        "limit": limit,
        "base": base,
        "tuned": tuned,
        "changes": changes,
        "forgetting": any(c["verdict"] == "worse" for c in changes),
        "rule": RULE,
    }
    if out_dir is not None:
        result["file"] = str(Path(out_dir) / BASELINE_FILE)
        write_json(Path(out_dir) / BASELINE_FILE, result)
    return result


def _tagged(progress, tag: str):
    return None if progress is None else (lambda name, done, total: progress(f"{tag} {name}", done, total))


def _item_scores(directory: Path, names: Sequence[str]) -> dict[str, list[dict[str, float]]]:
    out = {}
    for name in names:
        with open(directory / items_file(name), encoding="utf-8") as fh:
            out[name] = [json.loads(line)["metrics"] for line in fh if line.strip()]
    return out


def compare(
    base: dict[str, Any],
    tuned: dict[str, Any],
    base_items: dict[str, list[dict[str, float]]] | None = None,
    tuned_items: dict[str, list[dict[str, float]]] | None = None,
) -> list[dict[str, Any]]:
    """One row per benchmark metric: both values, the change, its 95% interval and the verdict (see the
    module docstring). Every benchmark metric here is higher-is-better (accuracies, MC2 probability mass)."""
    rows = []
    for name, b in base["benchmarks"].items():
        t = tuned["benchmarks"][name]
        n = b["n"]
        for metric, b_value in b["metrics"].items():
            if metric.endswith("_stderr"):
                continue
            t_value = t["metrics"][metric]
            b_se, t_se = b["metrics"].get(f"{metric}_stderr"), t["metrics"].get(f"{metric}_stderr")
            change = t_value - b_value
            combined = math.sqrt(b_se**2 + t_se**2) if b_se is not None and t_se is not None else None
            paired = None
            se, size, interval = combined, n, "unpaired"
            if base_items and tuned_items and name in base_items and name in tuned_items:
                diffs = [ti[metric] - bi[metric] for bi, ti in zip(base_items[name], tuned_items[name], strict=True)]
                paired = mean_and_stderr(diffs)[1]
                if paired is not None:
                    se, size, interval = paired, len(diffs), "paired"
            ci = t_interval(change, se, size) if se is not None else None
            beyond = None if ci is None else (ci[0] > 0 or ci[1] < 0)
            if beyond is None:
                verdict = "no stderr (n < 2)"
            else:
                verdict = "within noise" if not beyond else ("better" if change > 0 else "worse")
            rows.append({
                "benchmark": name, "metric": metric, "n": n, "base": b_value, "tuned": t_value,
                "change": change, "stderr_base": b_se, "stderr_tuned": t_se, "stderr_combined": combined,
                "stderr_paired": paired, "level": LEVEL, "interval": interval,
                "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1],
                "beyond_uncertainty": beyond, "verdict": verdict,
            })
    return rows


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def render_baseline(result: dict[str, Any]):
    """A rich Table: base, tuned, change, its 95% interval and verdict per metric
    (3 decimals, to fit 80 columns; the JSON has full precision)."""
    from rich import box
    from rich.table import Table

    sizes = sorted({c["n"] for c in result["changes"]})
    table = Table(
        title=f"Forgetting check: base vs tuned on the same {'/'.join(map(str, sizes))} items per benchmark",
        caption=f"change = tuned - base; {LEVEL:.0%} interval of the change (paired over the items, t with "
        "n-1 df); worse/better when it excludes 0",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("benchmark", "metric", "base", "tuned", "change", f"{LEVEL:.0%} interval", "verdict"):
        table.add_column(col, justify="left" if col in ("benchmark", "metric", "verdict") else "right", no_wrap=True)
    for c in result["changes"]:
        style = {"worse": "red", "better": "green"}.get(c["verdict"], "")
        interval = "-" if c["ci_low"] is None else f"{_fmt(c['ci_low'], sign=True)}..{_fmt(c['ci_high'], sign=True)}"
        table.add_row(c["benchmark"], c["metric"], _fmt(c["base"]), _fmt(c["tuned"]), _fmt(c["change"], sign=True),
                      interval, f"[{style}]{c['verdict']}[/]" if style else c["verdict"])
    return table
