"""Fixtures for the server tests: the real transformers engine on the tiny model with two LoRA adapters
saved to disk, and the app on loopback.

`real_engine` is `tunelab.serve.engines.load_engine("transformers", ...)` on tests/conftest.py's
train_model_dir, serving two PEFT LoRA adapters ("alpha", "beta", random non-zero weights, so each answers
differently), once per session. Each test gets it through `Recorded`, a wrapper that delegates everything
to it and records what the tests observe: the requests submitted and, per stream, the Deltas its reader
was given. Slowness and failures are made on the real engine itself (its decode step slowed or made to
raise, by monkeypatch), so the server is tested against the engine it ships with.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import LiveServer

from tunelab.serve.engine import Delta, GenerationRequest, Stream

ADAPTERS = ("alpha", "beta")
BASE = "tiny"  # the name the test servers serve the base under (the engine's own is the directory's name)


def wait_for(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def save_lora(model_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter directory as PEFT saves it after training (adapter_config.json naming the base),
    with random weights (init_lora_weights=False) so that it changes the base's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_dirs(train_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {name: save_lora(train_model_dir, root / name, seed) for seed, name in enumerate(ADAPTERS)}


@pytest.fixture(scope="session")
def real_engine(train_model_dir, adapter_dirs):
    from tunelab.serve.engines import load_engine

    # one torch thread: the tiny model gains nothing from more on a shared 2-core machine (the engine's
    # scheduler thread reads TUNELAB_THREADS when it is built); float32: greedy answers must not depend on
    # what else shares a batch
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_THREADS", "1")
        eng = load_engine("transformers", str(train_model_dir), dict(adapter_dirs), device="cpu", max_batch=8,
                          dtype="float32")
    yield eng
    eng.close()


class RecordedStream:
    """A real engine Stream, with the Deltas its reader was given recorded (iterating, blocking or async,
    goes through the real Stream's own iterators)."""

    def __init__(self, request: GenerationRequest, stream: Stream):
        self.request = request
        self.stream = stream
        self.deltas: list[Delta] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def cancel(self) -> None:
        self.stream.cancel()

    def __iter__(self) -> Iterator[Delta]:
        for delta in self.stream:
            self.deltas.append(delta)
            yield delta

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Delta]:
        async for delta in self.stream:
            self.deltas.append(delta)
            yield delta

    def outcome(self, timeout: float = 10.0) -> Delta | None:
        """The engine's final Delta for this request once the engine has ended it (None if it has not
        within `timeout`). For a request its reader left, that Delta is the one nobody read."""
        if self.deltas and self.deltas[-1].finish_reason is not None:
            return self.deltas[-1]
        if not wait_for(lambda: self.stream.finished, timeout):
            return None
        return [*self.stream][-1]


class Recorded:
    """The real engine, delegating everything; records the requests submitted and their streams."""

    def __init__(self, engine: Any):
        self.real = engine
        self.submitted: list[GenerationRequest] = []
        self.streams: list[RecordedStream] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def submit(self, request: GenerationRequest) -> RecordedStream:
        stream = RecordedStream(request, self.real.submit(request))
        self.submitted.append(request)
        self.streams.append(stream)
        return stream

    def stream_for(self, prompt_ids: list[int]) -> RecordedStream:
        return next(s for s in reversed(self.streams) if s.request.prompt_ids == prompt_ids)

    def idle(self) -> bool:
        stats = self.real.stats()
        return stats["batch_size"] == 0 and stats["queue_depth"] == 0


@pytest.fixture
def engine(real_engine):
    """The session's real engine, recorded for this test; it is idle when the test starts and when it ends
    (a test that leaves a request running would slow or confuse the next one)."""
    assert wait_for(lambda: Recorded(real_engine).idle(), 30), "the engine is still busy from an earlier test"
    rec = Recorded(real_engine)
    yield rec
    assert wait_for(rec.idle, 30), "a request was left running in the engine"


@pytest.fixture
def slow_steps(real_engine, monkeypatch):
    """slow_steps(seconds): the real engine sleeps that long before each decode step, so a long answer
    takes long enough for a test to disconnect or time out while it generates."""
    original = real_engine._step

    def pace(delay: float) -> None:
        def step() -> None:
            time.sleep(delay)
            original()

        monkeypatch.setattr(real_engine, "_step", step)

    return pace


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
