"""Index build, incremental re-indexing, search and retrieval quality with the real bundled MiniLM."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tunelab.config import RagConfig
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.rag import build_index, load_index, retrieval_metrics


@pytest.fixture
def spy(minilm, monkeypatch):
    """Records every text the embedder is asked to embed."""
    seen: list[str] = []
    real = minilm.embed

    def embed(texts):
        seen.extend(texts)
        return real(texts)

    monkeypatch.setattr(minilm, "embed", embed)
    return seen


def test_build_search_and_recall(corpus: Path, tmp_path: Path, minilm, questions, spy):
    out = tmp_path / "index"
    result = build_index(corpus, out, RagConfig(), embedder=minilm)
    assert result.full_rebuild and result.rebuild_reason == "no previous index"
    assert sorted(result.files_added) == sorted(p.name for p in corpus.iterdir())
    assert result.chunks == result.chunks_embedded == len(spy) == 8
    assert "Parking > Permits\nStaff car parking permits" in "\n".join(spy)  # heading path is embedded too
    assert {f.name for f in out.iterdir()} == {"manifest.json", "chunks.jsonl", "vectors.npy", "index.faiss",
                                               ".tunelab-output.json"}  # the marker: a rag-index output

    vectors = np.load(out / "vectors.npy")
    assert vectors.shape == (8, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedder"]["name"] == "all-minilm-l6-v2" and manifest["embedder"]["dim"] == 384
    assert manifest["files"]["payroll.md"]["chunks"] == [r["id"] for r in read_jsonl(out / "chunks.jsonl")
                                                         if r["doc"] == "payroll.md"]

    index = load_index(out, embedder=minilm)
    hits = index.search([q for q, _ in questions], k=3)
    assert len(hits) == len(questions)
    for ranked in hits:
        assert [h.rank for h in ranked] == [1, 2, 3]
        assert ranked[0].score >= ranked[1].score >= ranked[2].score
    scores = retrieval_metrics(hits, [g for _, g in questions], ks=(1, 3))
    assert scores["recall@1"].value >= 6 / 7 and scores["recall@3"].value == 1.0
    assert hits[0][0].source == "parking.md > Parking > Permits"
    assert len(index.search(["anything"], k=50)[0]) == 8  # k larger than the index


def test_incremental_reindex(corpus: Path, tmp_path: Path, minilm, write_docs, spy):
    out = tmp_path / "index"
    build_index(corpus, out, RagConfig(), embedder=minilm)
    before = {r["id"]: v for r, v in zip(read_jsonl(out / "chunks.jsonl"), np.load(out / "vectors.npy"), strict=True)}
    spy.clear()

    # unchanged: nothing embedded
    again = build_index(corpus, out, RagConfig(), embedder=minilm)
    assert not again.full_rebuild and again.chunks_embedded == 0 and again.chunks_reused == 8 and spy == []
    assert len(again.files_unchanged) == 5

    # one section of one file edited: only that chunk is embedded
    write_docs(corpus, {"payroll.md": (corpus / "payroll.md").read_text().replace(
        "Keystone portal from the 20th", "Keystone portal from the 22nd")})
    changed = build_index(corpus, out, RagConfig(), embedder=minilm)
    assert changed.files_changed == ["payroll.md"] and len(changed.files_unchanged) == 4
    assert changed.chunks_embedded == 1 and changed.chunks_reused == 7 and changed.chunks_dropped == 1
    assert len(spy) == 1 and "22nd" in spy[0]
    hit = load_index(out, embedder=minilm).search(["When do payslips appear?"], k=1)[0][0]
    assert "22nd" in hit.text

    # a deleted file: its chunks are gone, nothing embedded; a new file: only its chunks embedded
    spy.clear()
    (corpus / "kitchen.md").unlink()
    write_docs(corpus, {"library.md": "# Library\n\nBooks can be borrowed for three weeks.\n"})
    third = build_index(corpus, out, RagConfig(), embedder=minilm)
    assert third.files_removed == ["kitchen.md"] and third.files_added == ["library.md"]
    assert third.chunks_embedded == 1 and len(spy) == 1 and "Books" in spy[0]
    rows = read_jsonl(out / "chunks.jsonl")
    assert not [r for r in rows if r["doc"] == "kitchen.md"]
    assert "kitchen.md" not in json.loads((out / "manifest.json").read_text())["files"]
    # reused vectors are the stored ones, row for row
    vectors = np.load(out / "vectors.npy")
    assert load_index(out).faiss_index.ntotal == len(rows) == len(vectors) == 8
    reused = [(i, r["id"]) for i, r in enumerate(rows) if r["id"] in before]
    assert len(reused) == 6
    for i, cid in reused:
        assert np.array_equal(vectors[i], before[cid])


def test_changed_parameters_or_embedder_force_a_full_rebuild(corpus: Path, tmp_path: Path, minilm, spy):
    out = tmp_path / "index"
    build_index(corpus, out, RagConfig(), embedder=minilm)
    spy.clear()
    result = build_index(corpus, out, RagConfig(chunk_tokens=128, chunk_overlap=16), embedder=minilm)
    assert result.full_rebuild and "chunking parameters changed" in result.rebuild_reason
    assert result.chunks_embedded == result.chunks == len(spy)
    assert any("full rebuild" in n for n in result.notes)

    # the same weights under another name (a local sentence-transformers directory) still rebuild
    local = tmp_path / "my-embedder"
    for f in minilm.spec.path.rglob("*"):
        target = local / f.relative_to(minilm.spec.path)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(f, target)
    other = build_index(corpus, out, RagConfig(chunk_tokens=128, chunk_overlap=16, embedding_model=str(local)))
    assert other.full_rebuild and "embedding model changed" in other.rebuild_reason
    index = load_index(out)
    assert index.manifest["embedder"]["name"] == str(local)
    assert index.search(["When are salaries paid?"], k=1)[0][0].doc == "payroll.md"


def test_model_files_changed_after_build_refuses_search(corpus: Path, tmp_path: Path, minilm):
    out = tmp_path / "index"
    build_index(corpus, out, RagConfig(), embedder=minilm)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["embedder"]["fingerprint"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TunelabError, match="has changed since the index"):
        load_index(out, embedder=minilm).search(["x"], k=1)


def test_errors_leave_user_files_alone(corpus: Path, tmp_path: Path, minilm):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(TunelabError, match="holds files tunelab did not write"):
        build_index(corpus, mine, RagConfig(), embedder=minilm)
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1

    with pytest.raises(TunelabError, match="unknown embedding model 'nope'"):
        build_index(corpus, tmp_path / "x", RagConfig(embedding_model="nope"))
    empty = tmp_path / "empty-docs"
    empty.mkdir()
    (empty / "blank.md").write_text("")
    with pytest.raises(TunelabError, match=r"no documents with text(.|\n)*blank.md: empty file"):
        build_index(empty, tmp_path / "y", RagConfig(), embedder=minilm)
    assert not (tmp_path / "y").exists()

    with pytest.raises(TunelabError, match="not a RAG index"):
        load_index(mine)
    out = tmp_path / "index"
    build_index(corpus, out, RagConfig(), embedder=minilm)
    (out / "index.faiss").unlink()
    with pytest.raises(TunelabError, match="damaged"):
        load_index(out)


def test_search_rejects_bad_arguments(corpus: Path, tmp_path: Path, minilm):
    out = tmp_path / "index"
    build_index(corpus, out, RagConfig(), embedder=minilm)
    index = load_index(out, embedder=minilm)
    with pytest.raises(TypeError, match="list of queries"):
        index.search("a single string", k=1)
    with pytest.raises(TunelabError, match="k must be > 0"):
        index.search(["q"], k=0)
    assert index.search([], k=3) == []


@pytest.mark.slow
def test_handbook_retrieval(tmp_path: Path, minilm):
    """The handbook example: 89 questions whose `source` names the document that answers them."""
    from tunelab.rag import evaluate_retrieval

    root = Path(__file__).parents[2] / "examples" / "handbook"
    result = build_index(root / "docs", tmp_path / "handbook-index", RagConfig(), embedder=minilm)
    assert len(result.files_added) == 10 and not result.skipped
    scores = evaluate_retrieval(load_index(result.out_dir, embedder=minilm), root / "eval.jsonl", k=5)
    values = {name: mv.value for name, mv in scores.metrics.items()}
    print({name: round(v, 3) for name, v in values.items()}, result.timings)
    assert len(scores.rows) == 89
    assert values["recall@5"] >= 0.9 and values["mrr"] >= 0.75


def test_index_dir_for_an_experiment(tmp_path: Path):
    from tunelab.config import ExperimentConfig
    from tunelab.rag import index_dir_for

    config = ExperimentConfig(name="exp", workdir=tmp_path)
    assert index_dir_for(config) == tmp_path / "exp" / "rag-index"
    config.rag.index_dir = tmp_path / "shared-index"
    assert index_dir_for(config) == tmp_path / "shared-index"
