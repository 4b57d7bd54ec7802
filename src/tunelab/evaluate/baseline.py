"""The forgetting check: the base model and the tuned one on the same benchmark slice, side by side.

    peft_model, tokenizer, report = load_with_adapter("smollm2-135m-instruct", Path("runs/exp/train"))
    result = run_baseline(peft_model, tokenizer, ["hellaswag", "truthfulqa_mc1"], limit=100)
    result["changes"]     # per benchmark metric: base, tuned, change, stderrs, verdict
    result["forgetting"]  # True when some metric got worse by more than its combined standard error

CLI: `tunelab eval --adapter DIR --baseline [--benchmark NAMES] [--limit N]`.

Why this way:
- One model in memory: the adapter is applied once and the base model is scored inside PEFT's
  `disable_adapter()`, so base and tuned see identical weights, items, batch size and padding (the
  settings scores move with); only the adapter differs.
- The default slice is hellaswag + truthfulqa_mc1, the first 100 items of each: general
  commonsense completion and resistance to imitating falsehoods, the abilities domain fine-tuning
  most often erodes; both are in ../shared/benchmarks. It is a quick check (two models x ~870
  scored continuations, minutes on a laptop CPU): at n=100 an accuracy near 0.3-0.5 has a standard
  error of ~0.05, so only drops of roughly 7 points or more are flagged. Raise --limit for a finer
  check (the whole sets: 10042 and 817 items).
- The flag: change = tuned - base; it "exceeds" when |change| > sqrt(se_base^2 + se_tuned^2), the
  combined standard error of two independent means (as asked of a quick forgetting check; it ignores
  that both ran on the same items, so it is conservative). The paired standard error (of per-item
  differences, same items) is reported next to it and is usually much smaller.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import write_json
from .benchmarks.base import mean_and_stderr
from .benchmarks.run import items_file, run_benchmarks

DEFAULT_BENCHMARKS = ("hellaswag", "truthfulqa_mc1")
DEFAULT_LIMIT = 100
BASELINE_FILE = "baseline.json"
RULE = ("change = tuned - base; flagged when |change| > sqrt(stderr_base^2 + stderr_tuned^2) (combined standard "
        "error, unpaired, conservative); stderr_paired is the standard error of per-item differences")


def run_baseline(
    model: Any,
    tokenizer: Any,
    names: Sequence[str] = DEFAULT_BENCHMARKS,
    *,
    limit: int | None = DEFAULT_LIMIT,
    batch_size: int = 32,
    benchmark_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Score `model` (a PEFT model) with its adapter off, then on; per-metric changes and the flag.

    With `out_dir`: base/ and tuned/ hold each run's per-item files and summary, and baseline.json
    the comparison (atomic writes)."""
    if not hasattr(model, "disable_adapter"):
        raise TunelabError("the forgetting check compares a model with its adapter on and off: give --adapter")
    names = list(dict.fromkeys(names))
    with tempfile.TemporaryDirectory(prefix="tunelab-baseline-") as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        common = {"limit": limit, "batch_size": batch_size, "benchmark_dir": benchmark_dir}
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
    """One row per benchmark metric: both values, the change and whether it exceeds the noise.
    Every benchmark metric here is higher-is-better (accuracies, MC2 probability mass)."""
    rows = []
    for name, b in base["benchmarks"].items():
        t = tuned["benchmarks"][name]
        for metric, b_value in b["metrics"].items():
            if metric.endswith("_stderr"):
                continue
            t_value = t["metrics"][metric]
            b_se, t_se = b["metrics"].get(f"{metric}_stderr"), t["metrics"].get(f"{metric}_stderr")
            change = t_value - b_value
            combined = math.sqrt(b_se**2 + t_se**2) if b_se is not None and t_se is not None else None
            paired = None
            if base_items and tuned_items and name in base_items and name in tuned_items:
                diffs = [ti[metric] - bi[metric] for bi, ti in zip(base_items[name], tuned_items[name], strict=True)]
                paired = mean_and_stderr(diffs)[1]
            exceeds = None if combined is None else abs(change) > combined
            verdict = "within noise" if not exceeds else ("better" if change > 0 else "worse")
            if exceeds is None:
                verdict = "no stderr (n < 2)"
            rows.append({
                "benchmark": name, "metric": metric, "n": b["n"], "base": b_value, "tuned": t_value,
                "change": change, "stderr_base": b_se, "stderr_tuned": t_se, "stderr_combined": combined,
                "stderr_paired": paired, "exceeds_stderr": exceeds, "verdict": verdict,
            })
    return rows


def _fmt(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.3f}" if sign else f"{value:.3f}"


def render_baseline(result: dict[str, Any]):
    """A rich Table: base, tuned, change ± combined stderr, paired stderr and verdict per metric
    (3 decimals, to fit 80 columns; the JSON has full precision)."""
    from rich import box
    from rich.table import Table

    sizes = sorted({c["n"] for c in result["changes"]})
    table = Table(
        title=f"Forgetting check: base vs tuned on the same {'/'.join(map(str, sizes))} items per benchmark",
        caption="change = tuned - base ± combined stderr sqrt(se_base² + se_tuned²); worse/better when |change| "
        "exceeds it; paired: stderr of the per-item differences",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col in ("benchmark", "metric", "base", "tuned", "change ± se", "paired", "verdict"):
        table.add_column(col, justify="left" if col in ("benchmark", "metric", "verdict") else "right", no_wrap=True)
    for c in result["changes"]:
        style = {"worse": "red", "better": "green"}.get(c["verdict"], "")
        change = _fmt(c["change"], sign=True)
        if c["stderr_combined"] is not None:
            change += f" ± {_fmt(c['stderr_combined'])}"
        table.add_row(c["benchmark"], c["metric"], _fmt(c["base"]), _fmt(c["tuned"]), change,
                      _fmt(c["stderr_paired"]), f"[{style}]{c['verdict']}[/]" if style else c["verdict"])
    return table
