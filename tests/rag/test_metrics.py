"""Retrieval metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tunelab.errors import TunelabError
from tunelab.rag.metrics import retrieval_metrics
from tunelab.rag.retriever import Hit


def ranked(*docs: str) -> list[Hit]:
    return [Hit(f"{d}#{i}", d, (), "", 1.0 - i / 10, i) for i, d in enumerate(docs, start=1)]


def test_recall_and_mrr():
    hits = [
        ranked("a.md", "b.md", "c.md"),  # gold at rank 1
        ranked("b.md", "c.md", "a.md"),  # gold at rank 3
        ranked("b.md", "c.md", "d.md"),  # gold not retrieved
        ranked("sub/a.md", "b.md", "c.md"),  # gold named by its tail after '/'
    ]
    scores = retrieval_metrics(hits, ["a.md", "a.md", "a.md", "a.md"], ks=(1, 3))
    assert scores["recall@1"].value == pytest.approx(2 / 4)
    assert scores["recall@3"].value == pytest.approx(3 / 4)
    rr = [1, 1 / 3, 0, 1]
    mean = sum(rr) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in rr) / 3)
    assert scores["mrr"].value == pytest.approx(mean)
    assert scores["mrr"].stderr == pytest.approx(sd / 2)
    assert scores["mrr"].details["cutoff"] == 3
    assert scores["recall@1"].stderr == pytest.approx(math.sqrt(1 / 3) / 2)  # std of [1,0,0,1]
    assert scores["recall@1"].to_dict()["n"] == 4


def test_chunk_ids_and_several_gold_sources():
    hits = [ranked("a.md", "b.md", "c.md")]
    assert retrieval_metrics(hits, ["b.md#2"], ks=(1, 2))["recall@2"].value == 1.0
    assert retrieval_metrics(hits, ["b.md#2"], ks=(1, 2))["mrr"].value == 0.5
    both = retrieval_metrics(hits, [["c.md", "z.md"]], ks=(1, 3))
    assert both["recall@3"].value == 0.5 and both["mrr"].value == pytest.approx(1 / 3)


def test_bad_inputs():
    with pytest.raises(TunelabError, match="must pair up"):
        retrieval_metrics([ranked("a.md")], ["a.md", "b.md"])
    with pytest.raises(TunelabError, match="gold source must be"):
        retrieval_metrics([ranked("a.md")], [""])
    with pytest.raises(TunelabError, match="no queries"):
        retrieval_metrics([], [])
    note = retrieval_metrics([ranked("a.md")], ["a.md"], ks=(1, 5))["recall@5"]
    assert "only 1 hits" in note.details["note"]
