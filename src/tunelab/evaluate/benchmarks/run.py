"""Run multiple-choice benchmarks on a model: load items, score every choice, aggregate, write, show.

The result records what the numbers depend on (batch size, padding side, no chat template, 0-shot,
lm-eval's space delimiter, max length, dtype), because scores move with those settings and a user
comparing runs must see them. Requests already scored in this run are not scored again: TruthfulQA
MC1 and MC2 share their context and most of their choices.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import TunelabError
from ...io import write_json, write_jsonl
from ..loglik import loglikelihood, resolve_max_length
from .base import TARGET_DELIMITER, Benchmark, Item, choice_argmax, mean_and_stderr, norm_argmax
from .registry import resolve_items

SUMMARY_FILE = "benchmarks_summary.json"


def items_file(name: str) -> str:
    return f"benchmark_{name}.jsonl"


def run_benchmarks(
    model: Any,
    tokenizer: Any,
    names: Sequence[str],
    *,
    limit: int | None = None,
    batch_size: int = 32,
    benchmark_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    paths: Mapping[str, str | os.PathLike] | None = None,
    share_prefix: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Score `model` on each named benchmark; returns metrics with standard errors and the settings.

    `paths` maps a benchmark name to its data file (overrides the directory lookup). With `out_dir`,
    writes one JSONL of per-item results per benchmark and a summary JSON (atomically).
    `progress(name, done, total)` is called as requests finish.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise TunelabError(
            "no benchmark named; choose from truthfulqa_mc1, truthfulqa_mc2, hellaswag, arc_easy, ..."
        )
    paths = dict(paths or {})
    unknown_paths = set(paths) - set(names)
    if unknown_paths:
        raise TunelabError(f"a path was given for {', '.join(sorted(unknown_paths))}, which is not being run")
    loaded = [resolve_items(n, limit=limit, benchmark_dir=benchmark_dir, path=paths.get(n)) for n in names]

    start = time.perf_counter()
    cache: dict[tuple[str, str], tuple[float, bool]] = {}
    results: dict[str, Any] = {}
    per_item: dict[str, list[dict[str, Any]]] = {}
    loglik_stats: dict[str, Any] = {}
    for bench, file, items in loaded:
        bench_start = time.perf_counter()
        scored, stats = _score_items(
            model, tokenizer, items, batch_size, share_prefix, cache, bench.name, progress
        )
        rows = [
            _item_row(bench, item, lls, greedy) for item, (lls, greedy) in zip(items, scored, strict=True)
        ]
        per_item[bench.name] = rows
        results[bench.name] = _aggregate(bench, rows, file, limit, time.perf_counter() - bench_start, stats)
        if "mode" in stats:
            loglik_stats = stats
    result = {
        "benchmarks": results,
        "settings": _settings(model, tokenizer, batch_size, share_prefix, loglik_stats),
        "wall_s": round(time.perf_counter() - start, 3),
    }
    if out_dir is not None:
        result["files"] = _write(Path(out_dir), result, per_item)
    return result


def _score_items(model, tokenizer, items: list[Item], batch_size, share_prefix, cache, name, progress):
    """Per item: (log-likelihood per choice, is_greedy per choice), reusing `cache` across benchmarks."""
    requests = [r for item in items for r in item.requests()]
    missing = list(dict.fromkeys(r for r in requests if r not in cache))
    stats: dict[str, Any] = {}
    if missing:
        report = (lambda done, total: progress(name, done, total)) if progress else None
        values = loglikelihood(
            model, tokenizer, missing, batch_size, share_prefix=share_prefix, stats=stats, progress=report
        )
        cache.update(zip(missing, values, strict=True))
    stats["requests_reused"] = len(set(requests)) - len(missing)
    out, pos = [], 0
    for item in items:
        values = [cache[r] for r in requests[pos : pos + len(item.choices)]]
        pos += len(item.choices)
        out.append(([v[0] for v in values], [v[1] for v in values]))
    return out, stats


def _item_row(bench: Benchmark, item: Item, lls: list[float], greedy: list[bool]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "benchmark": bench.name,
        "id": item.id,
        "query": item.query,
        "choices": list(item.choices),
        "gold": item.gold,
    }
    if item.labels is not None and bench.name == "truthfulqa_mc2":
        row["labels"] = list(item.labels)
    row["reference"] = item.choices[item.gold]
    row["ll"] = lls
    row["is_greedy"] = greedy
    row["prediction"] = choice_argmax(lls)
    row["prediction_text"] = item.choices[row["prediction"]]
    if "acc_norm" in bench.metrics:
        row["prediction_norm"] = norm_argmax(lls, item.choices)
    row["metrics"] = bench.score(item, lls)
    return row


def _aggregate(
    bench: Benchmark, rows, file: Path, limit, wall: float, stats: dict[str, Any]
) -> dict[str, Any]:
    metrics: dict[str, float | None] = {}
    for name in bench.metrics:
        mean, stderr = mean_and_stderr([r["metrics"][name] for r in rows])
        metrics[name] = mean
        metrics[f"{name}_stderr"] = stderr
    return {
        "metrics": metrics,
        "n": len(rows),
        "limit": limit,
        "file": str(file),
        "wall_s": round(wall, 3),
        "requests": sum(len(r["choices"]) for r in rows),
        "requests_scored": stats.get("unique_requests", 0),
        "requests_reused": stats.get("requests_reused", 0),
        "forward_calls": stats.get("forward_calls", 0),
        "tokens_forwarded": stats.get("tokens_forwarded", 0),
        "tokens_full_rows": stats.get("tokens_full_rows", 0),
    }


def _settings(
    model: Any, tokenizer: Any, batch_size: int, share_prefix: bool, stats: dict[str, Any]
) -> dict[str, Any]:
    config = getattr(model, "config", None)
    try:
        param = next(model.parameters())
        dtype, device = str(param.dtype).removeprefix("torch."), str(param.device)
    except (StopIteration, AttributeError, TypeError):
        dtype = device = None
    return {
        "model": getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None),
        "dtype": dtype,
        "device": device,
        "batch_size": batch_size,
        "padding_side": stats.get("padding_side") or ("none (packed rows)" if share_prefix else "right"),
        "chat_template_applied": False,
        "num_fewshot": 0,
        "target_delimiter": TARGET_DELIMITER,
        "max_length": stats.get("max_length") or resolve_max_length(model, tokenizer),
        "scoring": stats.get("mode") or ("packed" if share_prefix else "full-rows"),
        "scoring_fallback_reason": stats.get("fallback_reason"),
        "conventions": "lm-evaluation-harness 0.4.x, hf backend (loglikelihood, multiple_choice)",
    }


def _write(
    out_dir: Path, result: dict[str, Any], per_item: dict[str, list[dict[str, Any]]]
) -> dict[str, str]:
    files = {}
    for name, rows in per_item.items():
        files[name] = str(out_dir / items_file(name))
        write_jsonl(out_dir / items_file(name), rows)
    files["summary"] = str(out_dir / SUMMARY_FILE)
    write_json(out_dir / SUMMARY_FILE, {**result, "files": files})
    return files


# ---------------------------------------------------------------------------------------------- display


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_table(result: dict[str, Any]):
    """A rich Table: one line per benchmark metric, with its standard error, n and wall time."""
    from rich.table import Table

    settings = result.get("settings", {})
    table = Table(
        title="Multiple-choice benchmarks (lm-eval conventions)",
        caption=(
            f"0-shot, no chat template, batch {settings.get('batch_size')}, "
            f"padding: {settings.get('padding_side')}, {settings.get('dtype')}; ± is the standard error"
        ),
    )
    for column, justify in (
        ("benchmark", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("± stderr", "right"),
        ("n", "right"),
        ("time (s)", "right"),
    ):
        table.add_column(column, justify=justify)
    for name, bench in result.get("benchmarks", {}).items():
        metrics = bench["metrics"]
        first = True
        for metric, value in metrics.items():
            if metric.endswith("_stderr"):
                continue
            table.add_row(
                name if first else "",
                metric,
                _fmt(value),
                _fmt(metrics.get(f"{metric}_stderr")),
                str(bench["n"]) if first else "",
                f"{bench['wall_s']:.1f}" if first else "",
            )
            first = False
    return table
