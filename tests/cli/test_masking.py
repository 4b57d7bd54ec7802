"""What the command line prints never shows a secret: error messages naming a URL with a password, the
traceback of an unexpected error, --json results, and (through MaskedStream) anything else written to
stdout or stderr."""

from __future__ import annotations

import io
import json

import typer
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.cli.common import MaskedStream, emit, handle_errors
from tunelab.errors import TunelabError

PASSWORD = "S3cretPw-2718"
URL = f"http://alice:{PASSWORD}@judge.example.com/v1"


def test_an_error_naming_a_url_with_a_password_is_masked():
    exc = TunelabError(f"cannot reach {URL}: connection refused")
    assert str(exc) == "cannot reach http://alice:***@judge.example.com/v1: connection refused"
    assert PASSWORD not in repr(exc) and PASSWORD not in str(exc.args)


def test_config_error_on_the_terminal_is_masked(tmp_path):
    bad = {"name": "x", "model": {"name": "m"}, "data": {"train": "t.jsonl"},
           "eval": {"judge": {"spec": f"openai:judge@{URL.replace('http', 'ftp')}"}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code != 0
    assert "eval.judge.spec" in result.stderr and "ftp://alice:***@judge.example.com" in result.stderr
    assert PASSWORD not in result.stderr and PASSWORD not in result.stdout


def test_config_show_masks_the_password_and_keeps_the_rest(tmp_path):
    config = {"name": "x", "model": {"name": "m"}, "data": {"train": "t.jsonl"},
              "eval": {"judge": {"spec": f"openai:judge@{URL}"}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    for args in (["config", "show", str(path)], ["config", "show", str(path), "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "openai:judge@http://alice:***@judge.example.com/v1" in result.stdout and PASSWORD not in result.stdout


def test_an_unexpected_error_prints_its_traceback_masked():
    demo = typer.Typer()

    @demo.command()
    @handle_errors
    def crash() -> None:
        raise RuntimeError(f"unexpected: {URL} went away")

    result = CliRunner().invoke(demo, [])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert "RuntimeError: unexpected: http://alice:***@judge.example.com/v1 went away" in result.stderr
    assert PASSWORD not in result.stderr


def test_json_results_and_the_standard_streams_are_masked(capsys):
    emit({"judge": {"name": f"openai:m@{URL}", "api_key": "inline-credential-1"}}, as_json=True)
    assert json.loads(capsys.readouterr().out) == {
        "judge": {"name": "openai:m@http://alice:***@judge.example.com/v1", "api_key": "***"}}
    sink = io.StringIO()
    stream = MaskedStream(sink)
    assert stream.write(f"warning: {URL}\n") == len(f"warning: {URL}\n")
    stream.writelines(["sent with Bearer abcDEF123456789\n"])
    assert sink.getvalue() == "warning: http://alice:***@judge.example.com/v1\nsent with Bearer ***\n"
    assert stream.getvalue() == sink.getvalue()  # everything else is the real stream's
