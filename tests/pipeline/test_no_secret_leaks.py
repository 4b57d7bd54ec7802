"""No secret leaks: the main job (`tunelab run`, with an LLM judge) and `tunelab data synth`, run as a user
runs them (the CLI in a process of its own), with a password in the judge's and the teacher's URL and API
keys in the environment, leave none of them in any byte of any output: the run directory, the synth dataset
and its review files, the MLflow store (database and artifacts), the LLM call caches, tunelab's home,
stdout, stderr.

The loopback servers quote the credentials back in replies and error bodies, as servers that reject a key
do, so the paths by which a secret reaches a file are all taken: backend names built from the URL
(predictions, summaries, provenance, the manifest, the terminal), cache keys and cache files, failure
messages (review/failures.jsonl, judge errors in predictions), and replies stored as they came."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import openai_server
import pytest
import teacher_server as teacher
import yaml

import tunelab

PASSWORD = "S3cretPw-7781"
# The judge's key sits in a variable whose name says nothing (only the config names it) and has no known
# shape: masked because the backend registers what it reads. The teacher's is the usual kind.
JUDGE_KEY_ENV, JUDGE_KEY = "TUNELAB_JUDGE_CRED", "odd-judge-credential-5521"
TEACHER_KEY_ENV, TEACHER_KEY = "TUNELAB_TEST_API_KEY", "sk-live-abc123def456ghi789jkl0"
BASIC = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()  # what the server receives: Basic auth
SECRETS = [PASSWORD, JUDGE_KEY, TEACHER_KEY, BASIC]

EVAL = [("How many days of annual leave do staff get?", "Staff get 25 days of annual leave."),
        ("When must expense claims be filed?", "Expense claims are filed within 30 days."),
        ("Who resets a forgotten password?", "The IT helpdesk resets passwords."),
        ("Where is the head office?", "The head office is in Leeds.")]
DOCS = {"leave.md": "# Leave\n\nStaff get 25 days of annual leave each year, plus bank holidays.\n",
        "office.md": "# Office\n\nThe head office is in Leeds. The IT helpdesk resets forgotten passwords.\n"}


def _url(server: openai_server.OpenAIServer) -> str:
    return server.base_url.replace("http://", f"http://alice:{PASSWORD}@")


def _auth(server: openai_server.OpenAIServer) -> str:
    return server.requests[-1]["headers"].get("Authorization", "") if server.requests else ""


@pytest.fixture
def judge_server():
    server = openai_server.OpenAIServer()

    def respond(body):
        prompt = body["messages"][-1]["content"]
        if "expense claims" in prompt:  # a rejection quoting what it got, counted as a judge failure
            return openai_server.Reply(status=401, raw=json.dumps({"error": {
                "message": f"key {JUDGE_KEY} refused for alice:{PASSWORD} ({_auth(server)})"}}))
        if "atomic statements" in prompt:
            return json.dumps({"statements": ["The answer states a fact."]})
        if "STATEMENTS:" in prompt:
            return json.dumps({"verdicts": [{"statement": "The answer states a fact.", "reason": "checked",
                                             "supported": True}]})
        return json.dumps({"reason": f"graded for {JUDGE_KEY} via {_auth(server)}", "score": 4})

    server.responder = respond
    yield server.start()
    server.stop()


@pytest.fixture
def teacher_server():
    server = openai_server.OpenAIServer()

    def respond(body):
        text = json.dumps(body)
        if "LOCKED" in text:
            return openai_server.Reply(status=401, raw=json.dumps({"error": f"bad key {TEACHER_KEY}"}))
        if "BROKEN" in text:  # an unusable reply, kept for review as it came
            return f"Sorry, I cannot do this with key {TEACHER_KEY} as alice:{PASSWORD} ({_auth(server)})."
        return teacher.responder(body, slow_s=0.0)

    server.responder = respond
    yield server.start()
    server.stop()


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # the code under test, whichever way the test session imports it (installed, or PYTHONPATH=src)
    src = str(Path(tunelab.__file__).resolve().parents[1])
    env = {**env, "PYTHONPATH": os.pathsep.join([src, env.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", "from tunelab.cli import main; main()", *args], cwd=cwd,
                          env=env, capture_output=True, timeout=600)


def test_no_secret_in_any_output_of_run_and_synth(tmp_path, train_model_dir, judge_server, teacher_server):
    inputs = tmp_path / "inputs"  # the user's own files (the config holds the URLs): not searched
    (inputs / "docs").mkdir(parents=True)
    for name, text in DOCS.items():
        (inputs / "docs" / name).write_text(text)
    teacher.write_docs(inputs / "synth-docs", sections=4, marker={1: "BROKEN", 2: "LOCKED"})
    def jsonl(pairs) -> str:
        return "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                       + "\n" for q, a in pairs)

    train = [(f"{q} {how}", a) for q, a in EVAL for how in ("Briefly.", "Quick!")]  # no eval question repeated
    (inputs / "train.jsonl").write_text(jsonl(train))
    (inputs / "eval.jsonl").write_text(jsonl(EVAL))
    outputs = tmp_path / "outputs"
    config = {
        "name": "leaky", "workdir": str(outputs / "runs"), "model": {"name": str(train_model_dir)},
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "split": {"train": 0.75, "validation": 0.25},
                 "max_length": 96},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0},
        "eval": {"metrics": ["rougeL"], "max_new_tokens": 8, "batch_size": 4,
                 "judge": {"spec": f"openai:judge-model@{_url(judge_server)}", "api_key_env": JUDGE_KEY_ENV,
                           "max_retries": 0, "parse_retries": 0, "cache_dir": str(outputs / "judge-calls")}},
        "rag": {"docs": "docs", "top_k": 1, "chunk_tokens": 64, "chunk_overlap": 8},
        "synth": {"docs": "synth-docs", "min_chunk_tokens": 5, "per_chunk": 2,
                  "teacher": {"spec": f"openai:teacher-model@{_url(teacher_server)}",
                              "api_key_env": TEACHER_KEY_ENV, "max_retries": 0, "timeout_s": 10,
                              "cache_dir": str(outputs / "teacher-calls")}},
    }
    (inputs / "exp.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, JUDGE_KEY_ENV: JUDGE_KEY, TEACHER_KEY_ENV: TEACHER_KEY,
           "TUNELAB_HOME": str(outputs / "home"), "TUNELAB_THREADS": "1"}

    synth = _cli(["data", "synth", "--config", "exp.yaml"], inputs, env)
    assert synth.returncode == 0, synth.stderr.decode()
    run = _cli(["run", "exp.yaml", "--json"], inputs, env)
    assert run.returncode == 0, run.stderr.decode()

    # the secrets were really used and really quoted back, so there was something to leak
    assert any(r["headers"].get("Authorization") == f"Basic {BASIC}" for r in judge_server.requests)
    assert any("BROKEN" in json.dumps(r["body"]) for r in teacher_server.requests)
    streams = {"synth stdout": synth.stdout, "synth stderr": synth.stderr, "run stdout": run.stdout,
               "run stderr": run.stderr}
    files = {str(p): p.read_bytes() for p in outputs.rglob("*") if p.is_file()}
    assert any(name.endswith("mlflow.db") for name in files)
    assert any("/mlartifacts/" in name for name in files)
    assert any(name.endswith("review/failures.jsonl") for name in files)
    assert any("judge-calls" in n for n in files) and any("teacher-calls" in n for n in files)
    for name, data in {**streams, **files}.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} leaked into {name}"

    # masked, not dropped: the outputs still say which model on which host and what went wrong
    shown = lambda server: _url(server).replace(PASSWORD, "***")  # noqa: E731
    result = json.loads(run.stdout)
    run_dir = Path(result["run_dir"])
    first = result["compare"]["comparison"]["rows"][0]["id"]
    preds = [json.loads(line) for line in (run_dir / "eval" / first / "predictions.jsonl").open()]
    assert preds[0]["judge_model"] == f"openai:judge-model@{shown(judge_server)}"
    assert "graded for *** via Basic ***" in preds[0]["judge_accuracy_reason"]
    assert preds[1]["judge_accuracy"] is None and "HTTP 401" in preds[1]["judge_accuracy_error"]
    synth_dir = run_dir / "synth"
    manifest = json.loads((synth_dir / "manifest.json").read_text())
    assert manifest["teacher"]["name"] == f"openai:teacher-model@{shown(teacher_server)}"
    failures = [json.loads(line) for line in (synth_dir / "review" / "failures.jsonl").open()]
    assert {f["error_kind"] for f in failures} == {"http_error", "invalid_json"}
    assert f"teacher openai:teacher-model@{shown(teacher_server)}" in synth.stdout.decode()
