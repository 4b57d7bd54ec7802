"""Score retrieval on an eval file: each record's last user turn is the query, its `source` the gold.

    result = evaluate_retrieval(load_index("runs/x/rag-index"), "examples/handbook/eval.jsonl", k=5)
    result.summary()["metrics"]["recall@5"]

Records are read with tunelab's data readers (any supported format); `source` (a document name, a chunk
id, or a list of them) comes from the record's extra fields. A record without a question or a source
is an error naming its file, line and field; nothing is scored then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, Problem, TunelabError
from .metrics import per_query, retrieval_metrics
from .retriever import Hit, Index


@dataclass
class RetrievalEval:
    index: str
    data: str
    k: int
    ks: list[int]
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"index": self.index, "data": self.data, "n": len(self.rows), "k": self.k,
                "metrics": {name: mv.to_dict() for name, mv in self.metrics.items()},
                "timings": self.timings}


def default_ks(k: int) -> list[int]:
    return sorted({x for x in (1, 3, 5) if x <= k} | {k})


def load_queries(data: str | Path) -> tuple[list[str], list[str | list[str]]]:
    """(questions, gold sources) of an eval file."""
    from ..data.formats import read_records

    records = read_records([Path(data)]).records
    questions: list[str] = []
    golds: list[str | list[str]] = []
    problems: list[Problem] = []
    for i, rec in enumerate(records):
        file, line = str(rec.meta.get("file", data)), rec.meta.get("line", i + 1)
        turns = [m for m in (rec.messages or []) if m.get("role") == "user"]
        question = turns[-1].get("content") if turns else rec.text
        source = rec.meta.get("source")
        if not question or not str(question).strip():
            problems.append(Problem(file, line, "messages", "no user question to retrieve for", "no_question"))
            continue
        if isinstance(source, list) and source and all(isinstance(s, str) and s for s in source):
            golds.append(source)
        elif isinstance(source, str) and source.strip():
            golds.append(source.strip())
        else:
            problems.append(Problem(file, line, "source", "needs a gold source: a document name, a chunk id or a list "
                                    f"of them, got {source!r}", "no_source"))
            continue
        questions.append(str(question))
    if problems:
        raise InputError(problems[:20], total=len(problems),
                         header=f"{len(problems)} record(s) cannot be scored for retrieval:")
    if not questions:
        raise TunelabError(f"{data}: no records to score")
    return questions, golds


def evaluate_retrieval(index: Index, data: str | Path, k: int = 5, ks: list[int] | None = None) -> RetrievalEval:
    if k <= 0:
        raise TunelabError(f"k must be > 0, got {k}")
    ks = ks or default_ks(k)
    if max(ks) > k:
        raise TunelabError(f"recall cut-offs {ks} exceed k={k}")
    questions, golds = load_queries(data)
    t_load = time.perf_counter()
    index.embedder.model  # noqa: B018 - load the model first, so search_s is retrieval time only
    t0 = time.perf_counter()
    hit_lists = index.search(questions, k)
    t1 = time.perf_counter()
    metrics = retrieval_metrics(hit_lists, golds, ks)
    rows = [_row(q, g, hits, ks) for q, g, hits in zip(questions, golds, hit_lists, strict=True)]
    return RetrievalEval(str(index.path), str(data), k, ks, metrics, rows,
                         {"load_embedder_s": round(t0 - t_load, 3), "search_s": round(t1 - t0, 3),
                            "queries": len(questions)})


def _row(question: str, gold: str | list[str], hits: list[Hit], ks: list[int]) -> dict[str, Any]:
    scores = per_query(hits, gold, ks)
    return {"question": question, "gold": gold, **scores,
            "hits": [{"rank": h.rank, "source": h.source, "chunk_id": h.chunk_id, "score": round(h.score, 4)}
                     for h in hits]}
