"""evaluate.run: `tunelab eval`'s stage as a library function, and the one judge scoring that it shares
with the comparison (the main job): the same judge replies give the same outcome on both paths."""

from __future__ import annotations

import json

import openai_server
import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.compare import run as compare_run
from tunelab.config import EvalConfig, JudgeConfig, validate_data
from tunelab.errors import TunelabError
from tunelab.evaluate.run import judge_rows, run

QUESTIONS = [("How many days of leave?", "25 days."), ("What is the capital of France?", "Paris."),
             ("Who resets passwords?", "The IT helpdesk.")]


@pytest.fixture
def judge_server():
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in QUESTIONS))
    return path


def _partly_broken(body):
    """Scores 4, except that every reply about the capital of France is not JSON (a parse failure)."""
    if "capital of France" in json.dumps(body["messages"]):
        return openai_server.Reply(content="I refuse")
    return openai_server.Reply(content=json.dumps({"reason": "ok", "score": 4}))


def _judge(server) -> dict:
    return {"spec": f"openai:judge@{server.base_url}", "cache": False, "max_retries": 0, "parse_retries": 0}


def _via_eval(model_dir, data, server, tmp_path) -> dict:
    settings = EvalConfig(data=data, metrics=["token_f1"], max_new_tokens=3, judge=JudgeConfig(**_judge(server)))
    result = run(str(model_dir), settings, out=tmp_path / "out")
    return result.judge["metrics"]


def _via_compare(model_dir, data, server, tmp_path) -> dict:
    config = validate_data({
        "name": "judged", "workdir": str(tmp_path / "runs"), "model": {"name": str(model_dir)},
        "compare": {"train": False},
        "eval": {"data": str(data), "metrics": ["token_f1"], "max_new_tokens": 3, "judge": _judge(server)},
    })
    return compare_run.run(config).results[0].summary["judge"]["metrics"]


PATHS = {"tunelab eval": _via_eval, "tunelab run (compare)": _via_compare}


@pytest.mark.parametrize("path", PATHS)
def test_parse_failures_are_counted_not_scored_as_zeros_on_both_paths(path, tiny_model_dir, eval_file, judge_server,
                                                                      tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    judge_server.responder = _partly_broken
    metrics = PATHS[path](tiny_model_dir, eval_file, judge_server, tmp_path)
    for name in ("judge_accuracy", "judge_relevance"):
        m = metrics[name]
        assert (m["value"], m["n_scored"], m["n_failed"], m["failures"]) == (4.0, 2, 1, {"invalid_json": 1}), path


@pytest.mark.parametrize("path", PATHS)
def test_a_judge_that_scores_nothing_is_an_error_on_both_paths(path, tiny_model_dir, eval_file, judge_server,
                                                               tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    judge_server.responder = lambda body: openai_server.Reply(status=404)
    with pytest.raises(TunelabError, match=r"could not score a single row for judge_accuracy.*HTTP 404"):
        PATHS[path](tiny_model_dir, eval_file, judge_server, tmp_path)
    # nothing written that a re-run could take for a result: no eval output, no cached variant
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("runs/judged/eval/*/key.json"))


def test_answers_without_statements_are_not_a_judge_failure(judge_server):
    """Faithfulness is undefined for an answer that states nothing (RAGAS): counted, no value, no error."""
    judge_server.responder = lambda body: json.dumps({"statements": []} if "atomic statements" in
                                                     json.dumps(body) else {"reason": "ok", "score": 3})
    from tunelab.llm import OpenAIBackend

    rows = [{"question": "q?", "prediction": "Hm.", "reference": "r", "contexts": ["some context"]}]
    judged = judge_rows(rows, OpenAIBackend("judge", judge_server.base_url, max_retries=0), with_context=True,
                        retries=0)
    faith = judged.metrics["judge_faithfulness"]
    assert faith["value"] is None and faith["failures"] == {"no_statements": 1}
    assert rows[0]["judge_accuracy"] == 3 and rows[0]["judge_faithfulness"] is None


def test_the_cli_prints_what_the_library_returns(tiny_model_dir, eval_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(eval_file), "--metrics", "token_f1",
            "--max-new-tokens", "2", "--limit", "2", "--json"]
    printed = json.loads(CliRunner().invoke(app, args).stdout)
    direct = run(str(tiny_model_dir), EvalConfig(data=eval_file, metrics=["token_f1"], max_new_tokens=2, limit=2))
    assert printed.keys() == direct.to_dict().keys() == {"model", "generation"}
    assert printed["generation"]["n"] == 2
    assert printed["generation"]["metrics"].keys() == direct.to_dict()["generation"]["metrics"].keys()


def test_settings_are_checked_before_a_model_is_loaded():
    with pytest.raises(TunelabError, match="nothing to evaluate"):
        run("no-such-model", EvalConfig())
    with pytest.raises(TunelabError, match="give --adapter"):
        run("no-such-model", EvalConfig(baseline=True))
