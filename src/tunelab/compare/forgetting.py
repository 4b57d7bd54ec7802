"""The forgetting check inside the main job: what domain training cost each tuned adapter in general
ability, on the benchmarks of `eval.benchmarks` (default hellaswag + truthfulqa_mc1 when only
`eval.baseline` is set), with its adapter off and on, on the same loaded weights and the same items.

Runs when `eval.baseline` is true or `eval.benchmarks` is non-empty; cached per adapter under
`<run_dir>/eval/<model>--<kind>--forgetting/` under a key of the adapter's and the base model's content,
the chat template's text, device kind and dtype, each benchmark's data file by content, the limit and
the batch size (scores move with padding).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..io import write_json
from .variants import Variant, model_identity, slug, stable_hash, weights_hash


def wanted(config: ExperimentConfig) -> bool:
    return bool(config.eval.baseline or config.eval.benchmarks)


def run_checks(config: ExperimentConfig, variants: list[Variant], stage: Callable[[str], None],
               on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """{variant label: the per-benchmark-metric change rows of evaluate.baseline.compare};
    `on_progress(task, done, total)` is called as benchmark requests are scored."""
    from ..evaluate.baseline import DEFAULT_BENCHMARKS, DEFAULT_LIMIT, run_baseline
    from .evaluate import _is_adapter, _load

    if not wanted(config):
        return {}
    names = list(config.eval.benchmarks or DEFAULT_BENCHMARKS)
    limit = config.eval.limit or DEFAULT_LIMIT
    paths = dict(config.eval.benchmark_paths)
    # retrieval does not change the weights; full models have no adapter to switch off
    adapters = [v for v in variants if not v.rag and _is_adapter(v.weights)]
    out: dict[str, list[dict[str, Any]]] = {}
    for v in adapters:
        out_dir = Path(config.run_dir) / "eval" / f"{slug(v.model)}--{slug(v.kind)}--forgetting"
        batch_size = max(config.eval.batch_size, 16)
        key = check_key(config, v, names, limit, batch_size)
        cached = out_dir / "baseline.json"
        if cached.is_file() and (out_dir / "key.json").is_file():
            if json.loads((out_dir / "key.json").read_text()).get("hash") == key:
                out[v.label] = json.loads(cached.read_text())["changes"]
                continue
        stage(f"forgetting check: {v.label} vs its base on {', '.join(names)} ({limit} items each)")
        model, tokenizer = _load(config, v.model, v.weights)
        # the old key goes first: a failure part way must not leave it vouching for new files
        (out_dir / "key.json").unlink(missing_ok=True)
        report = None if on_progress is None else (
            lambda task, done, total, label=v.label: on_progress(f"forgetting {label}: {task}", done, total))
        result = run_baseline(model, tokenizer, names, limit=limit, batch_size=batch_size, paths=paths,
                              out_dir=out_dir, progress=report)
        write_json(out_dir / "key.json", {"hash": key})
        out[v.label] = result["changes"]
        del model
    return out


def check_key(config: ExperimentConfig, variant: Variant, names: list[str], limit: int, batch_size: int) -> str:
    """The cache key of one adapter's check: everything its scores depend on, by content (module doc)."""
    from ..digest import file_digest
    from ..evaluate.baseline import RULE
    from ..evaluate.benchmarks.registry import find_data_file, get_benchmark
    from .evaluate import _device

    paths = config.eval.benchmark_paths
    # each data file by content (the one named in eval.benchmark_paths, else the one found), and the
    # verdict's rule: a new file or rule never reuses old verdicts
    benchmarks = {name: file_digest(find_data_file(get_benchmark(name), path=paths.get(name))) for name in names}
    return stable_hash({"weights": weights_hash(variant.weights),
                        **model_identity(config, variant.model, _device(config)),
                        "benchmarks": benchmarks, "limit": limit, "batch_size": batch_size, "rule": RULE})
