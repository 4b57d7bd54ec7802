"""`tunelab serve` (the OpenAI-compatible server) and `tunelab chat` (a terminal chat, in process).

    tunelab serve --model smollm2-135m-instruct --adapter support=runs/exp/train --api-key KEY
    tunelab chat --model smollm2-135m-instruct --adapter runs/exp/train

The engine comes from tunelab.serve.engines.load_engine, the API from tunelab.serve.app.create_app,
the conversation from tunelab.serve.chat; this module parses options and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import console, err_console, handle_errors, parse_pairs

ENGINES = "transformers|llama.cpp|vllm"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _load_engine(kind: str, model: str, adapters: dict[str, Path], *, device: str, max_batch: int,
                 dtype: str) -> Any:
    from ..serve.engines import load_engine

    return load_engine(kind, model, adapters, device=device, max_batch=max_batch, dtype=dtype)


def _run_server(app: Any, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@handle_errors
def serve(
    model: str = typer.Option(..., "--model", "-m", help="Base model: bundled name, directory, .gguf or HF id."),
    adapter: list[str] = typer.Option([], "--adapter", help="NAME=RUN: serve a trained run's adapter as model NAME "
                                      "(repeatable; all share the base weights)."),
    engine: str = typer.Option("transformers", "--engine", help=ENGINES),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key: str | None = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY", show_envvar=True,
                                       help="Require this key as the bearer token of every request (also from "
                                       "TUNELAB_API_KEY)."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most requests decoded together (1: one at a time)."),
    request_timeout: float = typer.Option(300.0, "--request-timeout", help="Seconds before a request is cancelled."),
    max_tokens: int = typer.Option(2048, "--max-tokens-limit", min=1, help="The largest max_tokens a request may ask."),
    log: Path | None = typer.Option(None, "--log", help="Append one JSON line per request here (no prompt text)."),
    feedback_db: Path | None = typer.Option(None, "--feedback-db", help="Store answers and POST /v1/feedback in "
                                            "this SQLite file (`tunelab data prepare FILE` reads it)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16."),
) -> None:
    """Serve a model and its adapters over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models), with streaming, batching, /metrics and feedback."""
    from ..serve.app import create_app
    from ..serve.names import check_adapters, served_base_name

    adapters = {name: Path(run) for name, run in parse_pairs(adapter, "--adapter", "NAME=RUN",
                                                             "support=runs/exp/train").items()}
    base_name = served_base_name(model)
    check_adapters(base_name, adapters)
    if host not in _LOOPBACK and not api_key:
        err_console.print(f"[yellow]warning:[/] serving on {host} without an API key: anyone who can reach this "
                          "port can use the model (give --api-key or TUNELAB_API_KEY)")
    eng = _load_engine(engine, model, adapters, device=device, max_batch=max_batch, dtype=dtype)
    try:
        app = create_app(eng, api_key=api_key, served_name=base_name, request_timeout_s=request_timeout,
                         log_path=log, feedback_db=feedback_db, max_tokens_limit=max_tokens)
        shown = "[::1]" if host == "::1" else host
        console.print(f"serving {', '.join([base_name, *adapters])} ({eng.kind} engine, batches of up to "
                      f"{max_batch}) on http://{shown}:{port}/v1" + ("  (API key required)" if api_key else ""))
        console.print(f"metrics: http://{shown}:{port}/metrics" + (f"; request log: {log}" if log else "")
                      + (f"; feedback: {feedback_db}" if feedback_db else ""))
        _run_server(app, host, port)
    finally:
        eng.close()


@handle_errors
def chat(
    model: str = typer.Option(..., "--model", "-m", help="Base model: bundled name, directory, .gguf or HF id."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A trained run (or adapter directory) to chat with."),
    engine: str = typer.Option("transformers", "--engine", help=ENGINES),
    system: str | None = typer.Option(None, "--system", help="A system prompt."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy, as tunelab evaluates"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Chat with a model (and an adapter) in the terminal; answers stream as they are generated.
    /reset starts over, /exit (or Ctrl-D) quits, Ctrl-C stops an answer."""
    from ..errors import TunelabError
    from ..serve.chat import ChatSession
    from ..serve.names import served_base_name

    # the adapter's served name is internal here, but must not be the base's (a model directory named "adapter")
    name = "adapter" if served_base_name(model) != "adapter" else "adapter-1"
    adapters = {name: adapter} if adapter is not None else {}
    if adapter is not None and not adapter.exists():
        raise TunelabError(f"--adapter {adapter}: no such run or adapter directory")
    eng = _load_engine(engine, model, adapters, device=device, max_batch=1, dtype="auto")
    try:
        names = eng.model_names()
        session = ChatSession(eng, names[1] if adapter is not None else names[0], system=system,
                              max_tokens=max_tokens, temperature=temperature)
        who = f"{model} + {adapter}" if adapter is not None else model
        console.print(f"chatting with {who}; /reset starts over, /exit quits", style="dim")
        _chat_loop(session)
    finally:
        eng.close()


def _chat_loop(session: Any) -> None:
    from ..errors import TunelabError

    while True:
        try:
            text = console.input("[bold cyan]you>[/] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            console.print("(history cleared)", style="dim")
            continue
        console.print("[bold green]model>[/] ", end="")
        try:
            for piece in session.reply(text):
                console.out(piece, end="", highlight=False)
                console.file.flush()
            if session.last_finish_reason == "length":
                console.print("\n(answer cut at --max-tokens)", style="dim", end="")
        except KeyboardInterrupt:
            console.print("\n(answer stopped)", style="dim", end="")
        except TunelabError as exc:
            console.print(f"\n[bold red]error:[/] {exc}", end="")
        console.print()
