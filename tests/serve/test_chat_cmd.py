"""`tunelab chat` (terminal chat, in process) and `tunelab serve`'s options, with the engine loader and
uvicorn replaced: the engine is the tests' real one, and the server's app is called through Starlette's
TestClient instead of a port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from tunelab.cli import app as cli
from tunelab.cli import serve_cmd


class _Borrowed:
    """The session's engine, lent to one command: its close() must not stop it for the other tests."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def loaded(engine, monkeypatch):
    """Replaces the engine loader; records what each command asked it for."""
    calls: list[dict[str, Any]] = []
    lent = _Borrowed(engine)

    def load(kind: str, model: str, adapters: dict[str, Path], **options: Any) -> _Borrowed:
        calls.append({"kind": kind, "model": model, "adapters": adapters, **options})
        return lent

    monkeypatch.setattr(serve_cmd, "_load_engine", load)
    return calls, lent


def test_chat_streams_answers_and_keeps_the_history(loaded, engine):
    calls, lent = loaded
    result = CliRunner().invoke(cli, ["chat", "--model", "tiny", "--temperature", "0", "--max-tokens", "6"],
                                input="hello\nand then?\n/exit\n")
    assert result.exit_code == 0, result.output
    first, second = engine.submitted[-2:]
    # the base, by the engine's own name for it
    assert first.model == second.model == engine.model_names()[0] and calls[-1]["adapters"] == {}
    answer = "".join(d.text for d in engine.streams[-2].deltas)
    assert answer and answer in result.output
    assert second.prompt_ids == engine.render_chat([{"role": "user", "content": "hello"},
                                                    {"role": "assistant", "content": answer},
                                                    {"role": "user", "content": "and then?"}])
    assert "model>" in result.output and lent.closed


def test_chat_with_an_adapter_talks_to_the_adapter_and_reset_clears_history(loaded, engine, tmp_path):
    calls, _ = loaded
    run = tmp_path / "run"
    run.mkdir()
    result = CliRunner().invoke(cli, ["chat", "--model", "tiny", "--adapter", str(run), "--max-tokens", "3"],
                                input="hi\n/reset\nhi\n")  # ends at end of input, like Ctrl-D
    assert result.exit_code == 0, result.output
    assert calls[-1]["adapters"] == {"adapter": run}
    a, b = engine.submitted[-2:]
    assert a.model == b.model == "alpha"  # the engine's name for the one adapter loaded
    assert a.prompt_ids == b.prompt_ids  # /reset: the second "hi" starts a new conversation
    result = CliRunner().invoke(cli, ["chat", "--model", "tiny", "--adapter", str(tmp_path / "nope")], input="")
    assert result.exit_code == 2 and "no such run" in result.output


@pytest.fixture
def served(loaded, monkeypatch):
    apps: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(serve_cmd, "_run_server", lambda app, host, port: apps.append((app, host, port)))
    return apps


def test_serve_binds_loopback_by_default_and_takes_the_key_from_the_environment(served, loaded, tmp_path):
    calls, lent = loaded
    run = tmp_path / "run"
    run.mkdir()
    result = CliRunner().invoke(cli, ["serve", "--model", "tiny", "--adapter", f"alpha={run}", "--max-batch", "8"],
                                env={"TUNELAB_API_KEY": "k-123456"})
    assert result.exit_code == 0, result.output
    app, host, port = served[-1]
    assert (host, port) == ("127.0.0.1", 8000)
    assert calls[-1]["adapters"] == {"alpha": run} and calls[-1]["max_batch"] == 8 and lent.closed
    assert "k-123456" not in result.output
    with TestClient(app) as http:
        assert http.get("/v1/models").status_code == 401
        listed = http.get("/v1/models", headers={"Authorization": "Bearer k-123456"}).json()
    assert [m["id"] for m in listed["data"]] == ["tiny", "alpha", "beta"]


@pytest.mark.parametrize(("adapters", "message"), [
    (["../x={run}"], "plain name"),
    (["/tmp/x={run}"], "plain name"),
    (["a/b={run}"], "plain name"),
    (["tiny={run}"], "base model's served name"),
    (["a={run}", "a={run}"], "already given"),
    (["Ab={run}", "ab={run}"], "differ only in case"),
    (["a={run}/missing"], "no such run"),
    (["just-a-path"], "NAME=RUN"),
])
def test_serve_refuses_adapter_names_that_are_paths_or_clash(served, loaded, tmp_path, adapters, message):
    calls, _ = loaded
    run = tmp_path / "run"
    run.mkdir()
    args = ["serve", "--model", "tiny"]
    for a in adapters:
        args += ["--adapter", a.format(run=run)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not calls and not served  # refused before loading anything
