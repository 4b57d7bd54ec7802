"""The server on the real transformers engine: what only shows when the two meet. Concurrent HTTP clients
share decode batches and still get their own greedy answers; the engine Stream's async reader, as the app
drives it (a pending __anext__ cancelled on timeout or disconnect, a reader whose event loop has closed),
never breaks the engine; `tunelab serve --model DIR --adapter NAME=RUN` serves real requests end to end;
and `tunelab chat --adapter RUN` talks to the adapter."""

from __future__ import annotations

import asyncio
import socket
import threading

import openai
import pytest

from tunelab.serve.engine import GenerationRequest

from .conftest import wait_for

ASKS = [("tiny", "hello"), ("alpha", "hello"), ("beta", "hello"), ("tiny", "what is the leave policy?"),
        ("alpha", "who do I call for IT?"), ("beta", "when are expenses due?")]


def test_concurrent_clients_share_decode_batches_and_get_their_answer_alone(serve, make_client, engine, slow_steps):
    c = make_client(serve())

    def ask(model: str, text: str) -> str:
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], max_tokens=16,
                                      temperature=0)
        return r.choices[0].message.content

    alone = [ask(m, t) for m, t in ASKS]
    assert len(set(alone)) > 1, "the answers should differ by prompt and model"
    before = len(engine.batch_trace)
    slow_steps(0.01)  # 16 steps of at least 10 ms: every client's request is in while the others decode
    start = threading.Barrier(len(ASKS))
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            start.wait(timeout=10)
            got[i] = ask(*ASKS[i])
        except BaseException as exc:  # surfaced below, with the request that failed
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ASKS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(got) == len(ASKS)
    steps = list(engine.batch_trace)[before:]
    assert max(steps) > 1, steps  # the concurrent requests shared decode steps (the engine's own trace)
    assert [got[i] for i in range(len(ASKS))] == alone  # batching changed no one's greedy answer


def _prompt(engine, text: str) -> list[int]:
    return engine.render_chat([{"role": "user", "content": text}])


def test_a_pending_read_cancelled_mid_wait_cancels_the_request_and_the_engine_goes_on(engine, slow_steps):
    """What the app does on a timeout or a disconnect: the task awaiting the Stream's __anext__ is cancelled
    while it waits for the next token."""
    slow_steps(0.02)
    stream = engine.real.submit(GenerationRequest("alpha", _prompt(engine, "cancel me"), max_tokens=64))

    async def read_then_give_up() -> list:
        ait = stream.__aiter__()
        first = await ait.__anext__()
        task = asyncio.ensure_future(ait.__anext__())
        done, _ = await asyncio.wait({task}, timeout=0.005)  # the next token is 20 ms away: still waiting
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [first]

    asyncio.run(read_then_give_up())
    assert stream.cancelled
    assert wait_for(lambda: stream.finished) and wait_for(engine.idle)
    last = [*stream][-1]
    assert last.finish_reason == "cancelled" and last.completion_tokens < 64
    slow_steps(0)
    assert engine.real.submit(GenerationRequest("alpha", _prompt(engine, "next"), max_tokens=3)).result()[2] \
        .completion_tokens == 3


def test_a_reader_whose_event_loop_closed_does_not_stop_the_engine(engine, slow_steps):
    """A reader that waited on a Stream in an event loop that has since closed (its server stopped): the
    engine's next push to it has nobody to wake, and neither that request nor its batch may fail for it."""
    slow_steps(0.02)
    orphan = engine.real.submit(GenerationRequest("beta", _prompt(engine, "orphan"), max_tokens=12))
    companion = engine.real.submit(GenerationRequest("alpha", _prompt(engine, "companion"), max_tokens=12))

    async def wait_once() -> None:
        ait = orphan.__aiter__()
        await ait.__anext__()
        task = asyncio.ensure_future(ait.__anext__())
        await asyncio.wait({task}, timeout=0.001)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(wait_once())  # leaves a registered waiter on the stream
    loop.close()
    assert companion.result()[2].finish_reason == "length"  # its batch was not failed for the orphan
    assert wait_for(lambda: orphan.finished)
    assert [*orphan][-1].finish_reason in ("length", "cancelled")  # cancelled if its reader was collected
    slow_steps(0)
    assert engine.real.submit(GenerationRequest("beta", _prompt(engine, "next"), max_tokens=3)).result()[2] \
        .completion_tokens == 3


def test_serve_command_serves_a_model_and_its_adapter_end_to_end(train_model_dir, adapter_dirs, tmp_path,
                                                                 monkeypatch):
    """`tunelab serve --model DIR --adapter NAME=RUN` in a thread: the real engine loader, the app and
    uvicorn on a free loopback port; one request per model with the openai client; then shut down, which
    closes the engine. (In process: a subprocess would spend most of this test importing torch.)"""
    import uvicorn
    from typer.testing import CliRunner

    from tunelab.cli import app as cli
    from tunelab.cli import serve_cmd

    servers: list[uvicorn.Server] = []

    def run_server(app, host: str, port: int) -> None:  # serve_cmd._run_server, with a handle to stop it
        servers.append(uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                     access_log=False)))
        servers[0].run()

    monkeypatch.setattr(serve_cmd, "_run_server", run_server)
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "requests.jsonl"
    args = ["serve", "--model", str(train_model_dir), "--adapter", f"support={adapter_dirs['alpha']}", "--port",
            str(port), "--device", "cpu", "--dtype", "float32", "--max-batch", "4", "--log", str(log)]
    engines_before = _engine_threads()
    result: list = []
    thread = threading.Thread(target=lambda: result.append(CliRunner().invoke(cli, args)), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: (servers and servers[0].started) or not thread.is_alive(), 60)
        assert thread.is_alive(), result[0].output if result else "the command ended"
        url = f"http://127.0.0.1:{port}"
        with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60) as c:
            base = train_model_dir.name  # a directory is served under its name, never its path
            assert [m.id for m in c.models.list().data] == [base, "support"]
            answers = {}
            for model in (base, "support"):
                r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                              max_tokens=5, temperature=0)
                assert r.model == model and r.usage.completion_tokens == 5
                answers[model] = r.choices[0].message.content
        assert answers[base] != answers["support"]  # the adapter's weights answer, not the base's
    finally:
        if servers:
            servers[0].should_exit = True
        thread.join(timeout=60)
    assert not thread.is_alive() and result[0].exit_code == 0, result[0].output
    assert f"serving {base}, support" in result[0].output and f"http://127.0.0.1:{port}/v1" in result[0].output
    assert len(log.read_text().splitlines()) == 3  # the listing and the two answers
    assert wait_for(lambda: _engine_threads() == engines_before)  # shutting down closed the engine


def _engine_threads() -> int:
    return sum(t.name == "tunelab-engine" for t in threading.enumerate())


def test_chat_command_talks_to_the_adapter_on_the_real_engine(train_model_dir, adapter_dirs, engine, monkeypatch):
    """`tunelab chat --model DIR --adapter RUN`, the engine really loaded: the answer is the adapter's."""
    from typer.testing import CliRunner

    from tunelab.cli import app as cli

    monkeypatch.setenv("TUNELAB_THREADS", "1")
    prompt = _prompt(engine, "hello")
    base = engine.model_names()[0]
    expected = {m: engine.real.submit(GenerationRequest(m, prompt, max_tokens=6)).result()[0] for m in (base, "alpha")}
    assert expected[base] != expected["alpha"]
    for adapter, name in ((["--adapter", str(adapter_dirs["alpha"])], "alpha"), ([], base)):
        result = CliRunner().invoke(cli, ["chat", "--model", str(train_model_dir), *adapter, "--temperature", "0",
                                          "--max-tokens", "6", "--device", "cpu"], input="hello\n/exit\n")
        assert result.exit_code == 0, result.output
        assert expected[name] in result.output


def test_chat_with_an_adapter_on_a_base_directory_named_adapter(train_model_dir, adapter_dirs, tmp_path,
                                                                monkeypatch):
    """The name `tunelab chat` serves its adapter under is its own business: a base directory that happens to
    be called "adapter" must not clash with it."""
    import json
    import shutil

    from typer.testing import CliRunner

    from tunelab.cli import app as cli

    monkeypatch.setenv("TUNELAB_THREADS", "1")
    base = shutil.copytree(train_model_dir, tmp_path / "adapter")
    run = shutil.copytree(adapter_dirs["alpha"], tmp_path / "run")
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    result = CliRunner().invoke(cli, ["chat", "--model", str(base), "--adapter", str(run), "--temperature", "0",
                                      "--max-tokens", "3", "--device", "cpu"], input="hello\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "model>" in result.output
