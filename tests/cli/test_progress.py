"""Progress when the terminal is not interactive: timestamped plain lines on stderr at a steady pace,
never on stdout, and --json still prints one object there."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import openai_server
import pytest
import teacher_server as teacher
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.cli.common import LineProgress, progress

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [a-z ()-]+: ")


def test_lines_carry_done_total_rate_and_time_left_and_a_heartbeat_when_nothing_moves(capsys):
    now = [100.0]
    bar = LineProgress(every_s=0.05, clock=lambda: now[0])
    with bar:
        task = bar.add_task("generating", total=8)
        now[0] += 10
        bar.update(task, completed=2)
        now[0] += 5
        deadline = time.monotonic() + 2
        while "15 s so far" not in capsys.readouterr().err and time.monotonic() < deadline:
            time.sleep(0.02)  # the heartbeat repeats the line although nothing moved
        now[0] += 5
        bar.update(task, completed=8)
        bar.update(task, completed=8)  # a finished task is printed once
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert all(LINE.match(line) for line in lines)
    assert lines[-1].endswith("generating: 8/8 (100%), 0.40/s, 20 s so far")
    assert sum("8/8" in line for line in lines) == 1


def test_lines_before_the_first_item_say_how_long_it_has_been(capsys):
    with LineProgress(every_s=60) as bar:
        bar.add_task("reading documents", total=None)
    assert re.search(r"reading documents: 0, 0 s so far$", capsys.readouterr().err.strip())


def test_a_terminal_that_is_not_interactive_gets_lines_not_a_bar():
    assert isinstance(progress(), LineProgress)  # pytest's captured stderr is no terminal


@pytest.fixture
def server():
    srv = teacher.start()
    yield srv
    srv.stop()


def test_synth_json_prints_progress_lines_on_stderr_and_one_object_on_stdout(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_PROGRESS_EVERY", "0")
    teacher.write_docs(tmp_path / "docs", sections=3)
    result = CliRunner().invoke(app, [
        "data", "synth", str(tmp_path / "docs"), "--teacher", f"openai:teacher@{server.base_url}",
        "--out", str(tmp_path / "out"), "--no-cache", "--per-chunk", "1", "--min-chunk-tokens", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["records"]["train"] == 3
    lines = result.stderr.splitlines()
    assert any(re.search(r" generating: 3/3 \(100%\), [\d.]+/s", line) for line in lines)
    assert all(LINE.match(line) for line in lines if "generating" in line)


# -- the other long commands: eval generation, benchmarks, the main job's matrix -----------------------

FILES = Path(__file__).parents[1] / "evaluate" / "files"
QA = [("How many days of leave?", "25 days."), ("What is the capital of France?", "Paris."),
      ("Who resets passwords?", "The IT helpdesk.")]


def _finished(stderr: str, task: str, total: int) -> bool:
    """A timestamped line saying `task` reached total/total."""
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
    return any(stamp.match(line) and f" {task}: {total}/{total} (100%)" in line for line in stderr.splitlines())


def _one_object(stdout: str) -> dict:
    return json.loads(stdout)  # the whole of stdout: progress never lands there


@pytest.fixture
def eval_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    return path


def test_eval_generation_and_benchmarks_print_progress_lines_on_stderr(tiny_model_dir, eval_file):
    result = CliRunner().invoke(app, [
        "eval", "--model", str(tiny_model_dir), "--data", str(eval_file), "--metrics", "token_f1",
        "--max-new-tokens", "2", "--batch-size", "2", "--benchmark", "hellaswag",
        "--benchmark-path", f"hellaswag={FILES / 'hellaswag_val.jsonl'}", "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    out = _one_object(result.stdout)
    assert out["generation"]["n"] == 2 and out["benchmarks"]["benchmarks"]["hellaswag"]["n"] == 2
    assert _finished(result.stderr, "generating", 2)
    requests = re.search(r" hellaswag: (\d+)/\1 \(100%\)", result.stderr)  # 4 endings per item, unique requests
    assert requests and int(requests.group(1)) > 2
    assert "generating" not in result.stdout


@pytest.mark.parametrize("command", ["compare", "run"])
def test_the_main_jobs_matrix_prints_each_variants_progress_on_stderr(command, tiny_model_dir, eval_file, tmp_path):
    config = {"name": "progress", "workdir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
              "data": {"train": str(eval_file)}, "compare": {"train": False, "rag": "off"},
              "eval": {"data": str(eval_file), "metrics": ["token_f1"], "max_new_tokens": 2, "batch_size": 2}}
    (tmp_path / "exp.yaml").write_text(json.dumps(config))
    result = CliRunner().invoke(app, [command, str(tmp_path / "exp.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    rows = _one_object(result.stdout)["compare"]["comparison"]["rows"]
    assert [row["variant"] for row in rows] == [f"{tiny_model_dir.name} base"]
    assert _finished(result.stderr, f"eval {tiny_model_dir.name} base", 3)


# -- the LLM judge: eval --judge, eval --agreement, the matrix's judge, synth's judge filter ------------


@pytest.fixture
def judge_server():
    srv = openai_server.OpenAIServer(lambda body: json.dumps({"reason": "graded", "score": 3})).start()
    yield srv
    srv.stop()


def test_eval_judge_prints_judging_progress_on_stderr(tiny_model_dir, eval_file, judge_server):
    result = CliRunner().invoke(app, [
        "eval", "--model", str(tiny_model_dir), "--data", str(eval_file), "--metrics", "token_f1",
        "--max-new-tokens", "2", "--batch-size", "2", "--judge", f"openai:judge@{judge_server.base_url}",
        "--no-judge-cache", "--json"])
    assert result.exit_code == 0, result.output
    assert _one_object(result.stdout)["judge"]["metrics"]["judge_accuracy"]["n_scored"] == 3
    assert _finished(result.stderr, "judging", 6)  # 3 answers x (accuracy, relevance)
    assert not re.search(r"judging: \d", result.stdout)


def test_eval_agreement_prints_judging_progress_on_stderr(tmp_path, judge_server, monkeypatch):
    monkeypatch.setenv("TUNELAB_PROGRESS_EVERY", "0")
    ratings = [{"experiment": "exp", "question_id": f"q{i}", "question": f"Question {i}?", "reference": "The answer.",
                "variant_a": "base", "variant_b": "tuned", "answer_a": f"a{i}", "answer_b": f"b{i}", "choice": "a",
                "reviewer": "ann", "note": None, "created_at": "2026-01-02T03:04:05+00:00"} for i in range(2)]
    path = tmp_path / "ratings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ratings))
    result = CliRunner().invoke(app, ["eval", "--judge", f"openai:judge@{judge_server.base_url}", "--no-judge-cache",
                                      "--agreement", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert _one_object(result.stdout)["judge_metric"]["n_scored"] == 4
    counts = [int(m.group(1)) for m in re.finditer(r" judging: (\d)/4", result.stderr)]
    assert counts[0] == 0 and counts[-1] == 4 and counts == sorted(counts)  # counted up as answers come back


def test_the_matrix_prints_each_variants_judging_progress_on_stderr(tiny_model_dir, eval_file, tmp_path,
                                                                    judge_server):
    config = {"name": "judged", "workdir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
              "data": {"train": str(eval_file)}, "compare": {"train": False, "rag": "off"},
              "eval": {"data": str(eval_file), "metrics": ["token_f1"], "max_new_tokens": 2, "batch_size": 2,
                       "judge": {"spec": f"openai:judge@{judge_server.base_url}", "cache": False}}}
    (tmp_path / "exp.yaml").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "exp.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    _one_object(result.stdout)
    assert _finished(result.stderr, f"judge {tiny_model_dir.name} base", 6)


def test_synth_judge_filter_prints_judging_progress_on_stderr(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_PROGRESS_EVERY", "0")
    teacher.write_docs(tmp_path / "docs", sections=3)
    result = CliRunner().invoke(app, [
        "data", "synth", str(tmp_path / "docs"), "--teacher", f"openai:teacher@{server.base_url}",
        "--judge", f"openai:judge@{server.base_url}", "--out", str(tmp_path / "out"), "--no-cache",
        "--per-chunk", "1", "--min-chunk-tokens", "5", "--json"])
    assert result.exit_code == 0, result.output
    out = _one_object(result.stdout)
    assert out["records"]["train"] == 3
    # one grounding verdict per record, counted as each comes back, not only before and after
    assert {int(m.group(1)) for m in re.finditer(r" judging: (\d)/3", result.stderr)} == {0, 1, 2, 3}
