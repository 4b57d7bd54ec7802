"""The judge inside a comparison: scores join the table, failures are counted there, never silent zeros."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.compare import run as compare_run
from tunelab.config import validate_data


@pytest.fixture
def judge_server():
    import openai_server as mod

    asked: dict[str, int] = {}

    def respond(body):
        text = json.dumps(body["messages"])
        asked[text[:400]] = asked.get(text[:400], 0) + 1
        if "How many days" in text and "score: four" not in text:  # broken JSON at the first ask only
            return mod.Reply(content="score: four")
        if "What is the capital" in text:  # never parseable: must be counted, not scored
            return mod.Reply(content="I refuse")
        return mod.Reply(content=json.dumps({"reason": "close to the reference", "score": 4}))

    srv = mod.OpenAIServer(responder=respond).start()
    yield srv
    srv.stop()


def test_judge_scores_and_failures_reach_the_table(tmp_path, train_model_dir, judge_server, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-judge-key-123456")
    rows = [("How many days of leave?", "25 days."), ("What is the capital of France?", "Paris."),
            ("Who resets passwords?", "The IT helpdesk.")]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in rows))
    config = validate_data({
        "name": "judged", "workdir": str(tmp_path / "runs"), "model": {"name": str(train_model_dir)},
        "compare": {"train": False},
        "eval": {"data": str(data), "metrics": ["rougeL"], "max_new_tokens": 4,
                 "judge": {"spec": f"openai:judge-model@{judge_server.base_url}", "cache": False,
                           "max_retries": 0, "parse_retries": 1}},
    })
    result = compare_run.run(config)
    row = result.comparison.rows[0]
    acc = row["metrics"]["judge_accuracy"]
    assert acc["value"] == pytest.approx(4.0) and acc["n_failed"] == 1
    assert "judge_accuracy" in result.comparison.metrics
    preds = [json.loads(line) for line in (result.results[0].out_dir / "predictions.jsonl").read_text().splitlines()]
    assert preds[1]["judge_accuracy"] is None and preds[1]["judge_accuracy_error"].startswith("invalid_json")
    assert preds[0]["judge_accuracy"] == 4 and preds[0]["judge_model"].startswith("openai:judge-model@")
    md = Path(result.files["markdown"]).read_text()
    assert "judge_accuracy" in md
    for path in result.out_dir.parent.rglob("*"):
        if path.is_file():
            assert "sk-test-judge-key-123456" not in path.read_text(errors="ignore")
