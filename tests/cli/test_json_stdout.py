"""`--json` means stdout is exactly one JSON object: whatever libraries print while the command works
(MLflow's "View run ... at: URL" on a server store, a print, a C extension writing to descriptor 1)
goes to stderr. Each test parses the WHOLE stdout with json.loads, never its last line.

The main job itself is replaced by a stand-in that chatters the way those libraries do, so the tests
check the CLI's plumbing in seconds (tests/pipeline/test_run_pipeline.py parses the real job's stdout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app

CHATTER = "🏃 View run train at: http://mlflow.example/#/experiments/1/runs/abc\n"


def _chatty_run(config, **_kwargs):
    from tunelab.pipeline import PipelineResult

    sys.stdout.write(CHATTER)  # what mlflow's client does on a server store
    print("a library's print")
    return PipelineResult(Path(config.run_dir), steps=[{"step": "prepare", "status": "cached"}])


@pytest.fixture
def experiment(tmp_path) -> Path:
    (tmp_path / "quickstart.yaml").write_text(f"name: demo\nworkdir: {tmp_path / 'runs'}\n")
    return tmp_path


@pytest.mark.parametrize("command", ["run", "quickstart"])
def test_json_stdout_is_one_object_while_libraries_chatter(experiment, monkeypatch, command):
    import tunelab.pipeline
    import tunelab.quickstart

    monkeypatch.setattr(tunelab.pipeline, "run", _chatty_run)
    monkeypatch.setattr(tunelab.quickstart, "run", _chatty_run)
    args = (["run", str(experiment / "quickstart.yaml")] if command == "run"
            else ["quickstart", "--example", str(experiment)])
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # the whole of stdout
    assert out["run_dir"] == str(experiment / "runs" / "demo")
    assert CHATTER in result.stderr and "a library's print" in result.stderr


_SUBPROCESS = """
import os, sys
from pathlib import Path
import tunelab.pipeline
from tunelab.pipeline import PipelineResult

def chatty(config, **kwargs):
    sys.stdout.write("python-level chatter\\n")
    sys.stdout.flush()
    os.write(1, b"descriptor-level chatter\\n")  # as a C extension or a child process would
    return PipelineResult(Path(config.run_dir))

tunelab.pipeline.run = chatty
from tunelab.cli import main
sys.argv = ["tunelab", *sys.argv[1:]]
main()
"""


def test_json_stdout_of_a_real_process_holds_only_the_object(experiment):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS, "run", str(experiment / "quickstart.yaml"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["run_dir"] == str(experiment / "runs" / "demo")
    assert "python-level chatter" in proc.stderr and "descriptor-level chatter" in proc.stderr
