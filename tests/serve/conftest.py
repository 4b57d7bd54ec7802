"""Fixtures for the server tests: a small real engine on the tiny random model, and the app on loopback.

`SequentialEngine` satisfies the serving engine interface (tunelab.serve.engine: submit / Stream /
Delta, model_names, context_length, render_chat, stats) by running tunelab.models.generate.Generator one
request at a time in a worker thread, with two in-memory LoRA adapters ("alpha", "beta") on the tiny
model so that several model names route to different weights. It is real generation, not canned text;
it streams each answer token by token after computing it, checking for cancellation between tokens.

NOTE for the lead: the serving engine (src/tunelab/serve/engine.py, engines.py) is written in parallel.
Once it is merged, switch the `engine` fixture to `tunelab.serve.engines.load_engine("transformers",
...)` on the tiny model and delete SequentialEngine and the stand-in interface types below (they only
exist so this branch's tests run before engine.py exists).
"""

from __future__ import annotations

import asyncio
import queue
import socket
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

try:
    from tunelab.serve.engine import Delta, GenerationRequest
except ImportError:  # engine.py not merged yet: the interface's two data types, exactly as specified
    @dataclass
    class GenerationRequest:  # type: ignore[no-redef]
        model: str
        prompt_ids: list[int]
        max_tokens: int
        temperature: float = 0.0
        top_p: float = 1.0
        stop: list[str] = field(default_factory=list)
        seed: int | None = None

    @dataclass
    class Delta:  # type: ignore[no-redef]
        text: str
        token_ids: list[int]
        finish_reason: str | None
        prompt_tokens: int
        completion_tokens: int
        error: str | None = None

    import tunelab.serve

    _module = types.ModuleType("tunelab.serve.engine")
    _module.GenerationRequest, _module.Delta = GenerationRequest, Delta
    sys.modules["tunelab.serve.engine"] = _module
    tunelab.serve.engine = _module  # type: ignore[attr-defined]

ADAPTERS = ("alpha", "beta")
BASE = "tiny"


class _Stream:
    """One request's Deltas, readable from a thread (iter) or an event loop (async iter)."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.deltas: list[Delta] = []
        self.cancelled = threading.Event()
        self._cond = threading.Condition()
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def push(self, delta: Delta) -> None:
        with self._cond:
            self.deltas.append(delta)
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, event in wakers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that reader's event loop is closed (its server stopped): nobody to wake
                pass

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self):
        i = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda i=i: len(self.deltas) > i)
                delta = self.deltas[i]
            i += 1
            yield delta
            if delta.finish_reason is not None:
                return

    def __aiter__(self):
        return self._agen()

    async def _agen(self):
        event = asyncio.Event()
        with self._cond:
            self._wakers.append((asyncio.get_running_loop(), event))
        i = 0
        while True:
            event.clear()
            while i < len(self.deltas):
                delta = self.deltas[i]
                i += 1
                yield delta
                if delta.finish_reason is not None:
                    return
            await event.wait()


class SequentialEngine:
    """The interface on Generator, one request at a time. `token_delay_s` paces the token stream (a stand-in
    for a slow model) so disconnect and timeout tests can act while a request is still generating."""

    kind = "transformers"

    def __init__(self, model_dir: Path, token_delay_s: float = 0.0):
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from tunelab.models.generate import Generator

        torch.manual_seed(0)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        cfg = dict(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        self.model = get_peft_model(base, LoraConfig(**cfg), adapter_name=ADAPTERS[0])
        for name in ADAPTERS[1:]:
            self.model.add_adapter(name, LoraConfig(**cfg))
        self.model.eval()
        threads = torch.get_num_threads()  # Generator sets torch's process-wide count: leave it as found
        self.generator = Generator(self.model, self.tokenizer, chat_template=True, threads=1)
        self.raw = Generator(self.model, self.tokenizer, chat_template=False, threads=1)
        torch.set_num_threads(threads)
        self.token_delay_s = token_delay_s
        self.queue: queue.Queue[_Stream | None] = queue.Queue()
        self.running = 0
        self.max_running = 0
        self.cancelled: list[GenerationRequest] = []
        self.submitted: list[GenerationRequest] = []
        self.streams: list[_Stream] = []
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()

    def model_names(self) -> list[str]:
        return [BASE, *ADAPTERS]

    def context_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    def render_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.generator.encode(messages)

    def submit(self, request: GenerationRequest) -> _Stream:
        from tunelab.errors import TunelabError

        if request.model not in self.model_names():
            raise TunelabError(f"unknown model '{request.model}'")
        stream = _Stream(request)
        self.submitted.append(request)
        self.streams.append(stream)
        self.queue.put(stream)
        return stream

    def stats(self) -> dict[str, float]:
        return {"queue_depth": float(self.queue.qsize()), "batch_size": float(self.running)}

    def close(self) -> None:
        self.queue.put(None)
        self._worker.join(timeout=10)

    def _work(self) -> None:
        while True:
            stream = self.queue.get()
            if stream is None:
                return
            self.running = 1
            try:
                self._serve(stream)
            except Exception as exc:  # an engine reports errors in the stream, never dies with them
                stream.push(Delta("", [], "error", len(stream.request.prompt_ids), 0, error=str(exc)))
            finally:
                self.running = 0

    def _serve(self, stream: _Stream) -> None:
        from tunelab.models.generate import GenerationConfig

        req = stream.request
        n_prompt = len(req.prompt_ids)
        if stream.cancelled.is_set():
            self.cancelled.append(req)
            stream.push(Delta("", [], "cancelled", n_prompt, 0))
            return
        cfg = GenerationConfig(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                               stop=list(req.stop), seed=req.seed or 0, batch_size=1)
        text = self.tokenizer.decode(req.prompt_ids)
        if req.model == BASE:
            with self.model.disable_adapter():
                out = self.raw.generate([text], cfg)[0]
        else:
            self.model.set_adapter(req.model)
            out = self.raw.generate([text], cfg)[0]
        sent = 0
        for i, tok in enumerate(out.token_ids):
            if stream.cancelled.is_set():
                self.cancelled.append(req)
                stream.push(Delta("", [], "cancelled", n_prompt, i))
                return
            upto = min(len(out.text), len(self.tokenizer.decode(out.token_ids[: i + 1], skip_special_tokens=True)))
            piece, sent = out.text[sent:upto], max(sent, upto)
            last = i == len(out.token_ids) - 1
            stream.push(Delta(piece + (out.text[sent:] if last else ""), [tok],
                              out.finish_reason if last else None, n_prompt, i + 1))
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
        if not out.token_ids:
            stream.push(Delta(out.text, [], out.finish_reason, n_prompt, out.n_new_tokens))


class LiveServer:
    """uvicorn serving an app on 127.0.0.1 in a thread, on a free port."""

    def __init__(self, app: Any):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture(scope="session")
def engine(train_model_dir):
    eng = SequentialEngine(train_model_dir)
    yield eng
    eng.close()


@pytest.fixture
def serve(engine, tmp_path):
    """serve(**create_app options) -> a running LiveServer; stopped after the test."""
    from tunelab.serve.app import create_app

    started: list[LiveServer] = []

    def start(eng: Any = None, **options: Any) -> LiveServer:
        opts = dict(api_key=None, served_name=BASE, request_timeout_s=30.0, log_path=tmp_path / "requests.jsonl",
                    feedback_db=None, max_tokens_limit=64)
        opts.update(options)
        server = LiveServer(create_app(eng or engine, **opts)).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        server.__exit__(None, None, None)


@pytest.fixture
def make_client():
    """make_client(server, key=...) -> the official OpenAI client on `server`, without retries (a test sees
    each failure as it happens)."""
    import openai

    def make(server: LiveServer, key: str = "none", **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=30, **kwargs)

    return make
