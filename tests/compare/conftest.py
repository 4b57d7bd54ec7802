"""Hand-made variant results for the table and report tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tunelab.compare.evaluate import VariantResult
from tunelab.compare.variants import Variant


def _make_result(kind: str, rag: bool, scores: list[float], bleu: float = 10.0, ci=(8.0, 12.0), cats=None,
            prompt_tokens: int = 20, latency: float = 0.5) -> VariantResult:
    v = Variant("tiny-model", kind, rag, Path("/x") if kind != "base" else None)
    mean = float(np.mean(scores))
    se = float(np.std(scores, ddof=1) / math.sqrt(len(scores)))
    rows = [{"index": i, "rougeL": s, "prediction": f"p{i}", "reference": f"r{i}", "prompt_tokens": prompt_tokens,
             "category": (cats or ["a", "b"])[i % len(cats or ["a", "b"])],
             "prompt": [{"role": "user", "content": f"q{i}"}]} for i, s in enumerate(scores)]
    summary = {"n": len(scores), "metrics": {
        "rougeL": {"value": mean, "stderr": se, "aggregation": "mean", "higher_is_better": True},
        "bleu": {"value": bleu, "ci95": list(ci), "aggregation": "corpus", "higher_is_better": True}},
        "timings": {"latency_p50_s": latency, "latency_p95_s": latency * 2, "tokens_per_answer": 12.0}}
    return VariantResult(v, summary, rows, Path("/tmp"), cached=False)



@pytest.fixture
def make_result():
    return _make_result
