"""Retrieval metrics: recall@k and MRR of ranked hits against gold sources, with standard errors.

    scores = retrieval_metrics(index.search(questions, k=5), golds, ks=(1, 3, 5))
    scores["recall@3"].value, scores["recall@3"].stderr, scores["mrr"].value

A gold source names a document (`01-welcome-and-company.md`, matched against a hit's document path, or
its tail after a '/') or a chunk id; a query may have several gold sources. Per query:
- recall@k = the fraction of its gold sources found among the first k hits (one gold source: 1 or 0,
  the "hit rate" many tools report as recall@k);
- reciprocal rank = 1 / rank of the first hit matching any gold source, 0 if none was retrieved, so the
  MRR is cut off at the number of hits retrieved (reported as `cutoff`).
Each figure is a mean over queries with its standard error (sample std / sqrt(n)), as lm-eval reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import TunelabError
from ..evaluate.metrics.base import MetricValue, mean_stderr


def matches_gold(hit: Any, gold: str) -> bool:
    """A hit is gold when it is the gold chunk, or a chunk of the gold document (by path or file name)."""
    return hit.chunk_id == gold or hit.doc == gold or hit.doc.endswith("/" + gold)


def _golds(gold: str | Sequence[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else list(gold)


def per_query(hits: Sequence[Any], gold: str | Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    golds = _golds(gold)
    out: dict[str, float] = {}
    for k in ks:
        found = sum(1 for g in golds if any(matches_gold(h, g) for h in hits[:k]))
        out[f"recall@{k}"] = found / len(golds)
    first = next((i for i, h in enumerate(hits, start=1) if any(matches_gold(h, g) for g in golds)), None)
    out["rr"] = 1.0 / first if first else 0.0
    return out


def retrieval_metrics(hit_lists: Sequence[Sequence[Any]], gold: Sequence[str | Sequence[str]],
                      ks: Sequence[int] = (1, 3, 5)) -> dict[str, MetricValue]:
    """recall@k for each k, and MRR, over the queries; see the module doc for the definitions."""
    if len(hit_lists) != len(gold):
        raise TunelabError(f"{len(hit_lists)} hit lists but {len(gold)} gold sources; they must pair up")
    if not hit_lists:
        raise TunelabError("no queries to score")
    for i, g in enumerate(gold):
        if not _golds(g) or any(not isinstance(x, str) or not x for x in _golds(g)):
            raise TunelabError(f"query {i + 1}: gold source must be a non-empty document name or chunk id, got {g!r}")
    if any(k <= 0 for k in ks):
        raise TunelabError(f"k must be > 0, got {list(ks)}")
    cutoff = max((len(h) for h in hit_lists), default=0)
    short = max(ks) > cutoff
    rows = [per_query(h, g, ks) for h, g in zip(hit_lists, gold, strict=True)]
    out: dict[str, MetricValue] = {}
    for name in [f"recall@{k}" for k in ks] + ["rr"]:
        values = [r[name] for r in rows]
        mean, stderr = mean_stderr(values)
        metric = "mrr" if name == "rr" else name
        details: dict[str, Any] = {"description": _DESCRIPTIONS["mrr" if name == "rr" else "recall"]}
        if metric == "mrr":
            details["cutoff"] = cutoff
        elif short and int(name.split("@")[1]) > cutoff:
            details["note"] = f"only {cutoff} hits were retrieved per query"
        out[metric] = MetricValue(name=metric, value=mean, n=len(rows), aggregation="mean", higher_is_better=True,
                                  stderr=stderr, per_example=values, details=details)
    return out


_DESCRIPTIONS = {
    "recall": "fraction of a query's gold sources (document or chunk id) among the first k hits, mean over queries",
    "mrr": "1 / rank of the first hit matching a gold source (0 if none retrieved), mean over queries",
}
