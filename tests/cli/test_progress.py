"""Progress when the terminal is not interactive: timestamped plain lines on stderr at a steady pace,
never on stdout, and --json still prints one object there."""

from __future__ import annotations

import json
import re
import time

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
