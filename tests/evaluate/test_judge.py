"""The LLM judge against a loopback OpenAI-compatible server (and the tiny local model): parsing,
aggregation, failure counts by reason, RAGAS-style faithfulness, inputs, the eval CLI."""

from __future__ import annotations

import json
import math
import re
import shutil

import openai_server
import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import InputError, TunelabError
from tunelab.evaluate.judge import JUDGE_METRICS, judge_predictions, load_template
from tunelab.llm import OpenAIBackend, backend_from_spec


@pytest.fixture
def server():
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


Reply = openai_server.Reply


def row(i: int, answer: str, question: str = "What is the capital of France?", **extra) -> dict:
    return {"index": i, "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}],
            "prediction": answer, "reference": "Paris is the capital of France.", **extra}


def _field(prompt: str, name: str) -> str:
    m = re.search(rf"{name}:\n(.*?)(?:\n\n[A-Z]+:|\n\nReply)", prompt, re.DOTALL)
    return m.group(1).strip() if m else ""


def scripted_judge(ratings: dict[str, tuple], statements: dict[str, list[str]] | None = None,
                   supported: set[str] | None = None):
    """A judge keyed on the answer text: ratings[answer] = (accuracy reply, relevance reply), each a
    score or a raw reply string; statements/supported drive the faithfulness steps."""

    def respond(body):
        prompt = body["messages"][-1]["content"] if len(body["messages"]) == 2 else body["messages"][1]["content"]
        answer = _field(prompt, "ANSWER")
        if "REFERENCE:" in prompt or "Grade how relevant" in prompt:
            value = ratings[answer][0 if "REFERENCE:" in prompt else 1]
            return value if isinstance(value, str) else json.dumps({"reason": f"graded {answer}", "score": value})
        if "atomic statements" in prompt:
            return json.dumps({"statements": (statements or {})[answer]})
        if "STATEMENTS:" in prompt:
            listed = re.findall(r"^\d+\. (.*)$", _field(prompt, "STATEMENTS"), re.MULTILINE)
            return json.dumps({"verdicts": [{"statement": s, "reason": "checked", "supported": s in (supported or set())}
                                            for s in listed]})
        raise AssertionError(f"unexpected prompt: {prompt[:80]}")

    return respond


def test_scores_are_parsed_aggregated_and_recorded_per_row(server):
    server.responder = scripted_judge({"Paris.": (5, 5), "Lyon.": (1, 4), "Paris, I think.": (4, 3)})
    rows = [row(0, "Paris."), row(1, "Lyon."), row(2, "Paris, I think.")]
    backend = OpenAIBackend("judge-m", server.base_url, concurrency=3)
    res = judge_predictions(rows, backend)

    acc = res.metrics["judge_accuracy"]
    assert acc["value"] == pytest.approx(10 / 3)
    assert acc["stderr"] == pytest.approx(math.sqrt(((5 - 10 / 3) ** 2 + (1 - 10 / 3) ** 2 + (4 - 10 / 3) ** 2) / 2 / 3))
    assert (acc["n_scored"], acc["n_failed"], acc["failures"]) == (3, 0, {})
    assert acc["judge"] == f"openai:judge-m@{server.base_url}" and acc["prompt_version"] == "accuracy/2"
    assert acc["scale"] == "1-5"
    assert res.metrics["judge_relevance"]["value"] == pytest.approx(4.0)
    assert res.prompt_versions == {"accuracy": "accuracy/2", "relevance": "relevance/2"}
    assert res.stats["calls"] == 6 and len(server.requests) == 6

    res.apply(rows)
    assert rows[1]["judge_accuracy"] == 1.0 and rows[1]["judge_accuracy_reason"] == "graded Lyon."
    assert rows[1]["judge_relevance"] == 4.0 and rows[1]["judge_accuracy_error"] is None
    assert rows[1]["judge_model"] == res.judge and rows[1]["judge_prompt_versions"]["relevance"] == "relevance/2"
    # the question is the last user message; the reference is shown to the accuracy judge only
    prompts = [r["body"]["messages"][1]["content"] for r in server.requests]
    acc_prompt = next(p for p in prompts if "REFERENCE:" in p)
    assert "What is the capital of France?" in acc_prompt and "Paris is the capital of France." in acc_prompt
    rel_prompt = next(p for p in prompts if "Grade how relevant" in p)
    assert "Paris is the capital of France." not in rel_prompt


def test_failures_are_counted_by_reason_never_zeros(server):
    def respond(body):
        prompt = body["messages"][1]["content"]
        if "ANSWER:\nbroken" in prompt and "REFERENCE:" in prompt:
            return "I would give it a three."  # never JSON, even when asked again
        if "ANSWER:\nserver-error" in prompt:
            return Reply(status=500)
        return json.dumps({"reason": "fine", "score": 4})

    server.responder = respond
    rows = [row(0, "good"), row(1, "broken"), row(2, "server-error"), row(3, "also good")]
    backend = OpenAIBackend("m", server.base_url, max_retries=1, backoff_s=0.01)
    res = judge_predictions(rows, backend, retries=1)
    acc = res.metrics["judge_accuracy"]
    assert acc["value"] == 4.0 and acc["n_scored"] == 2 and acc["n_failed"] == 2
    assert acc["failures"] == {"http_error": 1, "invalid_json": 1}
    rel = res.metrics["judge_relevance"]
    assert rel["n_scored"] == 3 and rel["failures"] == {"http_error": 1}
    res.apply(rows)
    assert rows[1]["judge_accuracy"] is None and rows[1]["judge_accuracy_error"].startswith("invalid_json:")
    assert rows[2]["judge_accuracy"] is None and "HTTP 500" in rows[2]["judge_accuracy_error"]
    values = res.metric_values()
    assert values["judge_accuracy"].n == 2 and values["judge_accuracy"].details["n_failed"] == 2


def test_faithfulness_is_supported_over_all_statements(server):
    statements = {"Paris is the capital. It has 2 million people. It is in Spain.":
                  ["Paris is the capital of France.", "Paris has 2 million people.", "Paris is in Spain."],
                  "No idea.": []}
    server.responder = scripted_judge({a: (3, 3) for a in statements}, statements,
                                      supported={"Paris is the capital of France.", "Paris has 2 million people."})
    rows = [row(0, "Paris is the capital. It has 2 million people. It is in Spain.",
                contexts=["Paris is the capital of France.", {"text": "About 2 million people live in Paris."}]),
            row(1, "No idea.", meta={"context": "Paris is in France."})]
    reports = []
    res = judge_predictions(rows, OpenAIBackend("m", server.base_url), with_context=True,
                            on_progress=lambda *report: reports.append(report))
    # one judgement per row and metric, faithfulness's two steps counted once (the answer with no
    # statements when its first step ends), each as it ends
    assert reports == [("judging", k, 6) for k in range(7)]
    faith = res.metrics["judge_faithfulness"]
    assert faith["value"] == pytest.approx(2 / 3) and faith["n_scored"] == 1
    assert faith["failures"] == {"no_statements": 1} and faith["scale"] == "0-1"
    assert faith["prompt_version"] == "faithfulness-statements/2, faithfulness-verdicts/2"
    verdict_prompt = next(r["body"]["messages"][1]["content"] for r in server.requests
                          if "STATEMENTS:" in r["body"]["messages"][1]["content"])
    assert "[1] Paris is the capital of France.\n\n[2] About 2 million people live in Paris." in verdict_prompt
    assert "exactly 3 verdicts" in verdict_prompt
    res.apply(rows)
    assert [s["supported"] for s in rows[0]["judge_faithfulness_statements"]] == [True, True, False]
    assert rows[1]["judge_faithfulness"] is None and rows[1]["judge_faithfulness_error"].startswith("no_statements")


def test_verdict_count_mismatch_is_re_asked(server, tmp_path):
    calls = {"verdicts": 0}

    def respond(body):
        prompt = body["messages"][1]["content"]
        if "atomic statements" in prompt:
            return json.dumps({"statements": ["a", "b"]})
        calls["verdicts"] += 1
        n = 1 if calls["verdicts"] == 1 else 2  # first reply forgets a statement
        return json.dumps({"verdicts": [{"statement": "s", "reason": "r", "supported": True}] * n})

    server.responder = respond
    res = judge_predictions([row(0, "x", context="ctx")], OpenAIBackend("m", server.base_url),
                            with_context=True, metrics=["judge_faithfulness"])
    assert res.metrics["judge_faithfulness"]["value"] == 1.0 and calls["verdicts"] == 2
    assert "expected 2 verdicts, one per statement, got 1" in server.requests[-1]["body"]["messages"][-1]["content"]
    # the verdicts are asked for under a schema holding exactly one per statement
    asked = server.requests[-1]["body"]["response_format"]["json_schema"]["schema"]["properties"]["verdicts"]
    assert asked["minItems"] == asked["maxItems"] == 2
    assert res.stats["structured_output"] == "json_schema"


def test_bad_inputs_are_clear_errors(server):
    backend = OpenAIBackend("m", server.base_url)
    with pytest.raises(InputError) as exc:
        judge_predictions([row(0, "a"), {"index": 1, "prediction": "b", "reference": ""}], backend)
    msg = str(exc.value)
    assert "predictions:1: field 'question'" in msg and "predictions:1: field 'reference'" in msg
    with pytest.raises(InputError, match="field 'contexts'"):
        judge_predictions([row(0, "a")], backend, with_context=True)
    with pytest.raises(TunelabError, match="needs the retrieved context"):
        judge_predictions([row(0, "a")], backend, metrics=["judge_faithfulness"])
    with pytest.raises(TunelabError, match="unknown judge metric"):
        judge_predictions([row(0, "a")], backend, metrics=["judge_vibes"])
    assert server.requests == []


def test_templates_carry_versions_and_placeholders():
    for metric in JUDGE_METRICS.values():
        for name in metric.prompts:
            t = load_template(name)
            assert re.fullmatch(r"[a-z-]+/\d+", t.version) and t.system and "$" in t.user
    with pytest.raises(TunelabError, match="no value for placeholder 'reference'"):
        load_template("accuracy").render(question="q", answer="a")


def test_a_tiny_random_local_judge_writes_a_valid_verdict_for_every_row(tiny_model_dir, tmp_path):
    import torch

    torch.set_num_threads(1)
    # the judge prompts are longer than the tiny model's 256 positions; RoPE takes a longer context as is
    model_dir = tmp_path / "tiny-long"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    backend = backend_from_spec(f"local:{model_dir}", threads=1, batch_size=4)
    res = judge_predictions([row(0, "Paris."), row(1, "Lyon.")], backend, retries=0)
    # decoded under the Rating schema, even a random model's verdicts parse (unaided it never wrote JSON)
    for m in res.metrics.values():
        assert m["n_scored"] == 2 and m["n_failed"] == 0 and 1 <= m["value"] <= 5
    assert res.stats["calls"] == 4


def test_eval_cli_adds_judge_metrics_to_summary_and_predictions(server, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    server.responder = lambda body: json.dumps({"reason": "ok", "score": 3})
    data = tmp_path / "eval.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]})
                              for q, a in [("Say hello.", "Hello world."), ("Capital of France?", "Paris.")]) + "\n")
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--metrics", "token_f1",
            "--max-new-tokens", "3", "--judge", f"openai:judge@{server.base_url}",
            "--judge-cache", str(tmp_path / "calls"), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    metrics = out["generation"]["metrics"]
    assert metrics["judge_accuracy"]["value"] == 3.0 and metrics["judge_accuracy"]["n_scored"] == 2
    assert metrics["judge_relevance"]["prompt_version"] == "relevance/2" and "token_f1" in metrics
    assert out["judge"]["stats"]["calls"] == 4 and out["judge"]["stats"]["cache"]["writes"] == 4
    summary = json.loads((tmp_path / "out" / "generation" / "summary.json").read_text())
    assert summary["metrics"]["judge_accuracy"]["judge"] == f"openai:judge@{server.base_url}"
    rows = [json.loads(x) for x in (tmp_path / "out" / "generation" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["judge_accuracy"] == 3 and r["judge_model"] for r in rows)

    # the terminal table shows the judge rows; a re-run is answered from the cache
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "judge_accuracy" in result.output and "2 scored, 0 failed" in result.output
    assert "4 from the cache" in result.output and len(server.requests) == 4


def test_eval_cli_errors_when_the_judge_scores_nothing(server, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    server.responder = lambda body: Reply(status=404)
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--max-new-tokens",
                                      "2", "--judge", f"openai:nope@{server.base_url}", "--no-judge-cache",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "could not score a single row" in result.output and "HTTP 404" in result.output
    assert not (tmp_path / "out").exists()  # no partial output
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--judge", "nonsense"])
    assert result.exit_code == 2 and "eval.judge.spec (--judge): " in result.output and "is not KIND:MODEL" in result.output


def test_each_judge_prompt_shows_one_example_reply_that_its_schema_accepts():
    from tunelab.evaluate.judge import Rating, Statements, Verdicts
    from tunelab.llm import parse_reply

    schemas = {"accuracy": Rating, "relevance": Rating, "faithfulness_statements": Statements,
               "faithfulness_verdicts": Verdicts}
    for name, schema in schemas.items():
        user = load_template(name).user
        example = user[user.rindex("Example"):]
        value, kind, error = parse_reply(example[example.index("{"):], schema)
        assert kind is None, (name, error)
        assert "$defs" not in user and '"properties"' not in user  # a shape and an example, never a raw schema
