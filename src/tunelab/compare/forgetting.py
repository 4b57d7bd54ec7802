"""The forgetting check inside the main job: what domain training cost each tuned adapter in general
ability, on the benchmarks of `eval.benchmarks` (default hellaswag + truthfulqa_mc1 when only
`eval.baseline` is set), with its adapter off and on, on the same loaded weights and the same items.

Runs when `eval.baseline` is true or `eval.benchmarks` is non-empty; cached per adapter under
`<run_dir>/eval/<model>--<kind>--forgetting/` by the weights' content, the benchmarks, the content of
their data files (`eval.benchmark_paths`, or found as evaluate.benchmarks.registry says) and the limit.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..io import write_json
from .variants import Variant, file_hash, slug, stable_hash, weights_hash


def wanted(config: ExperimentConfig) -> bool:
    return bool(config.eval.baseline or config.eval.benchmarks)


def run_checks(config: ExperimentConfig, variants: list[Variant],
               stage: Callable[[str], None]) -> dict[str, list[dict[str, Any]]]:
    """{variant label: the per-benchmark-metric change rows of evaluate.baseline.compare}."""
    from ..evaluate.baseline import DEFAULT_BENCHMARKS, DEFAULT_LIMIT, RULE, run_baseline
    from ..evaluate.benchmarks import find_data_file, get_benchmark
    from .evaluate import _is_adapter, _load

    if not wanted(config):
        return {}
    names = list(config.eval.benchmarks or DEFAULT_BENCHMARKS)
    limit = config.eval.limit or DEFAULT_LIMIT
    paths = dict(config.eval.benchmark_paths)
    # retrieval does not change the weights; full models have no adapter to switch off
    adapters = [v for v in variants if not v.rag and _is_adapter(v.weights)]
    # keyed by the data files' content and the verdict's rule, so a new file or rule never reuses old verdicts
    data = {n: file_hash(find_data_file(get_benchmark(n), path=paths.get(n))) for n in names} if adapters else {}
    out: dict[str, list[dict[str, Any]]] = {}
    for v in adapters:
        out_dir = Path(config.run_dir) / "eval" / f"{slug(v.model)}--{slug(v.kind)}--forgetting"
        key = stable_hash({"weights": weights_hash(v.weights), "benchmarks": names, "limit": limit, "data": data,
                           "rule": RULE})
        cached = out_dir / "baseline.json"
        if cached.is_file() and (out_dir / "key.json").is_file():
            if json.loads((out_dir / "key.json").read_text()).get("hash") == key:
                out[v.label] = json.loads(cached.read_text())["changes"]
                continue
        stage(f"forgetting check: {v.label} vs its base on {', '.join(names)} ({limit} items each)")
        model, tokenizer = _load(config, v.model, v.weights)
        # the old key goes first: a failure part way must not leave it vouching for new files
        (out_dir / "key.json").unlink(missing_ok=True)
        result = run_baseline(model, tokenizer, names, limit=limit, batch_size=max(config.eval.batch_size, 16),
                              paths=paths, out_dir=out_dir)
        write_json(out_dir / "key.json", {"hash": key})
        out[v.label] = result["changes"]
        del model
    return out
