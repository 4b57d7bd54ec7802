"""`tunelab rag index | query | eval`, run in-process, with the real bundled embedder."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tunelab.cli.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["rag", *args])


def test_index_query_eval_json(corpus: Path, tmp_path: Path, questions, minilm):
    out = tmp_path / "index"
    (corpus / "notes.xyz").write_text("unsupported")
    res = run("index", str(corpus), "--out", str(out), "--chunk-tokens", "200", "--overlap", "20", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["chunks"] == 8 and summary["chunks_embedded"] == 8 and summary["full_rebuild"]
    assert summary["chunking"]["chunk_tokens"] == 200
    assert summary["skipped"] == [{"path": "notes.xyz", "reason": summary["skipped"][0]["reason"]}]
    assert "unsupported file type" in summary["skipped"][0]["reason"]

    res = run("index", str(corpus), "--out", str(out), "--chunk-tokens", "200", "--overlap", "20", "--json")
    assert json.loads(res.stdout)["chunks_embedded"] == 0

    res = run("query", str(out), "How much is a parking permit?", "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert [h["rank"] for h in result["hits"]] == [1, 2]
    assert result["hits"][0]["source"] == "parking.md > Parking > Permits"
    assert "15 pounds" in result["hits"][0]["text"]

    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "a"}],
                                        "source": s}) + "\n" for q, s in questions))
    rows = tmp_path / "rows.jsonl"
    res = run("eval", str(out), "--data", str(data), "-k", "3", "--out", str(rows), "--json")
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)
    assert scores["n"] == 7 and set(scores["metrics"]) == {"recall@1", "recall@3", "mrr"}
    assert scores["metrics"]["recall@3"]["value"] == 1.0 and "stderr" in scores["metrics"]["recall@1"]
    assert len(rows.read_text().splitlines()) == 7

    # the human-readable forms print without error
    assert run("query", str(out), "Where is the bike shed?").exit_code == 0
    res = run("eval", str(out), "--data", str(data))
    assert res.exit_code == 0 and "recall@5" in res.stdout


def test_errors_exit_non_zero(corpus: Path, tmp_path: Path, minilm):
    res = run("query", str(tmp_path), "q")
    assert res.exit_code == 2 and "not a RAG index" in res.output
    res = run("index", str(corpus), "--out", str(tmp_path / "i"), "--chunk-tokens", "10", "--overlap", "10")
    assert res.exit_code == 2 and "--overlap" in res.output and "smaller than chunk_tokens" in res.output
    res = run("index", str(corpus), "--out", str(tmp_path / "i"), "--embedding-model", "no-such-model")
    assert res.exit_code == 2 and "unknown embedding model" in res.output

    out = tmp_path / "index"
    assert run("index", str(corpus), "--out", str(out), "--json").exit_code == 0
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                "source": "parking.md"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                    + "\n")
    res = run("eval", str(out), "--data", str(data), "--json")
    assert res.exit_code == 2 and f"{data}:2: field 'source'" in res.output
