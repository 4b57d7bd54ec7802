"""The OpenAI-compatible server, through the official `openai` client on loopback (raw httpx where the
client hides what is tested: the SSE bytes, malformed JSON, a disconnect)."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from .conftest import wait_for as _wait_for

HELLO = [{"role": "user", "content": "hello"}]


def _log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_models_lists_the_base_and_every_adapter(serve, make_client):
    c = make_client(serve())
    assert [m.id for m in c.models.list().data] == ["tiny", "alpha", "beta"]
    beta = c.models.retrieve("beta")
    assert (beta.id, beta.model_extra["parent"]) == ("beta", "tiny")
    with pytest.raises(openai.NotFoundError) as err:
        c.models.retrieve("gamma")
    assert err.value.code == "model_not_found"


def test_each_model_name_answers_with_its_own_weights_and_stream_equals_whole(serve, make_client, engine):
    c = make_client(serve())
    answers = {}
    for name in ("tiny", "alpha", "beta"):
        r = c.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0)
        assert r.model == name and r.object == "chat.completion" and r.id.startswith("chatcmpl-")
        assert r.usage.prompt_tokens == len(engine.render_chat(HELLO))
        assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
        answers[name] = r.choices[0].message.content
        chunks = list(c.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0,
                                                stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == answers[name]
        assert chunks[-1].choices[0].finish_reason == "length"
    # the adapters are different weights on one base: greedy answers differ by the model asked for
    assert len(set(answers.values())) == 3, answers


def test_a_request_without_temperature_is_answered_greedily(serve, make_client):
    # OpenAI's default is 1.0; tunelab serves what it evaluated (greedy) unless the request asks otherwise
    c = make_client(serve())
    asked = [c.chat.completions.create(model="alpha", messages=HELLO, max_tokens=12, **kw).choices[0].message.content
             for kw in ({}, {"temperature": 0}, {})]
    assert asked[0] == asked[1] == asked[2]


def test_the_stream_is_openai_sse_ending_in_done_with_usage_when_asked(serve):
    server = serve()
    body = {"model": "alpha", "messages": HELLO, "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    # without include_usage there is no usage chunk and no usage key
    body.pop("stream_options")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all("usage" not in json.loads(e[6:]) for e in events[:-1])


def test_content_given_as_text_parts_is_the_same_prompt(serve, make_client):
    c = make_client(serve())
    parts = [{"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}]
    a = c.chat.completions.create(model="beta", messages=HELLO, max_tokens=4, temperature=0)
    b = c.chat.completions.create(model="beta", messages=parts, max_tokens=4, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="beta", max_tokens=4, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])


def test_completions_take_text_or_token_ids(serve, make_client, engine):
    c = make_client(serve())
    r = c.completions.create(model="beta", prompt="hello world", max_tokens=4, temperature=0)
    ids = engine.tokenizer("hello world")["input_ids"]
    assert r.object == "text_completion" and r.usage.prompt_tokens == len(ids)
    by_ids = c.completions.create(model="beta", prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == r.choices[0].text
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="beta", prompt="hello world", max_tokens=4, temperature=0, stream=True))
    assert streamed == r.choices[0].text


def test_api_key_is_required_when_configured(serve, make_client):
    server = serve(api_key="s3cret-key-123")
    with pytest.raises(openai.AuthenticationError) as err:
        make_client(server, key="wrong").chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert err.value.status_code == 401 and err.value.code == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models").status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200
    r = make_client(server, key="s3cret-key-123").chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
    assert r.usage.completion_tokens == 2


@pytest.mark.parametrize(("kwargs", "status", "param", "code"), [
    ({"model": "gamma"}, 404, "model", "model_not_found"),
    ({"max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ({"max_tokens": 65}, 400, "max_tokens", "invalid_value"),  # the server's limit is 64
    ({"max_completion_tokens": 1000}, 400, "max_completion_tokens", "invalid_value"),
    ({"messages": [{"role": "user", "content": "hello " * 300}]}, 400, "messages", "context_length_exceeded"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role", "invalid_value"),
    ({"messages": []}, 400, "messages", None),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content", "missing_field"),
    ({"temperature": 3}, 400, "temperature", None),
    ({"n": 2}, 400, "n", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
])
def test_each_bad_request_gets_an_openai_error(serve, make_client, kwargs, status, param, code):
    args = {"model": "tiny", "messages": HELLO, "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as err:
        make_client(serve()).chat.completions.create(**args)
    e = err.value
    assert e.status_code == status and e.body["param"] == param and e.body["message"]
    assert set(e.body) == {"message", "type", "param", "code"}
    if code is not None:
        assert e.code == code


def test_context_check_counts_prompt_plus_max_tokens(serve, make_client, engine):
    c = make_client(serve(max_tokens_limit=1000))
    n = engine.context_length() - len(engine.render_chat(HELLO))
    assert c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=min(n, 3)).usage.completion_tokens
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=n + 1)
    assert err.value.code == "context_length_exceeded"
    assert f"maximum context length is {engine.context_length()} tokens" in err.value.body["message"]


@pytest.mark.parametrize(("raw", "code"), [
    (b'{"model": "tiny", "messages": [', "invalid_json"),
    (b'[1, 2]', "invalid_json"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', "invalid_type"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "invalid_type"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', "invalid_type"),
])
def test_malformed_json_and_wrong_types_are_400_not_fastapis_422(serve, raw, code):
    r = httpx.post(serve().url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code and set(r.json()) == {"error"}


def test_a_model_name_is_never_a_path(serve, make_client, engine, tmp_path):
    c = make_client(serve())
    before = len(engine.submitted)
    for name in (str(tmp_path), "../alpha", "alpha/../beta", "./tiny"):
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model=name, messages=HELLO, max_tokens=2)
    assert len(engine.submitted) == before


def test_unknown_routes_get_the_error_shape(serve):
    r = httpx.get(serve().url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


@pytest.fixture
def slow(engine, slow_steps):
    """The real engine paced at 20 ms a decode step, so a 64-token answer takes over a second."""
    slow_steps(0.02)
    return engine


def _left_early(engine, messages) -> None:
    """The request for `messages` was cancelled by the server and the engine ended it as cancelled, long
    before its 64 tokens: its batch slot is free."""
    rec = engine.stream_for(engine.render_chat(messages))
    assert _wait_for(lambda: rec.stream.cancelled)
    last = rec.outcome()
    assert last is not None and last.finish_reason == "cancelled" and last.completion_tokens < 64, last
    assert _wait_for(engine.idle)


def test_a_client_that_disconnects_mid_stream_cancels_its_stream(serve, slow, tmp_path):
    server = serve()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "stream then leave"}], "max_tokens": 64,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    _left_early(slow, body["messages"])
    assert _wait_for(lambda: any(e["status"] == 499 for e in _log_lines(tmp_path / "requests.jsonl")))


def test_a_client_that_disconnects_while_waiting_cancels_its_request(serve, slow, tmp_path):
    server = serve()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "wait then leave"}], "max_tokens": 64,
            "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.3)
    _left_early(slow, body["messages"])
    assert _wait_for(lambda: _log_lines(tmp_path / "requests.jsonl"))
    log = _log_lines(tmp_path / "requests.jsonl")
    assert log[-1]["status"] == 499 and log[-1]["finish_reason"] == "cancelled"


def test_a_request_past_the_timeout_is_cancelled_with_504(serve, make_client, slow):
    c = make_client(serve(request_timeout_s=0.3))
    messages = [{"role": "user", "content": "too slow"}]
    with pytest.raises(openai.APIStatusError) as err:
        c.chat.completions.create(model="tiny", messages=messages, max_tokens=64, temperature=0)
    assert err.value.status_code == 504 and err.value.code == "request_timeout"
    _left_early(slow, messages)
    with pytest.raises(openai.APIError, match="longer than the server's limit"):
        list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=64, temperature=0, stream=True))
    _left_early(slow, messages)


def test_sixteen_concurrent_clients_all_get_their_answer(serve, make_client):
    c = make_client(serve())
    prompts = [[{"role": "user", "content": f"question {i % 4}"}] for i in range(16)]
    expected = {i: c.chat.completions.create(model="alpha", messages=prompts[i], max_tokens=6, temperature=0)
                .choices[0].message.content for i in range(4)}
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            r = c.chat.completions.create(model="alpha", messages=prompts[i], max_tokens=6, temperature=0)
            got[i] = r.choices[0].message.content
        except BaseException as exc:  # surfaced below, with the request that failed
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(got) == 16
    assert all(got[i] == expected[i % 4] for i in range(16))


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_count_requests_errors_tokens_and_engine_gauges(serve, make_client):
    server = serve()
    c = make_client(server)
    r1 = c.chat.completions.create(model="beta", messages=HELLO, max_tokens=3, temperature=0)
    r2 = c.completions.create(model="beta", prompt="hello", max_tokens=2, temperature=0)
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="no-such-model-" + str(_), messages=HELLO, max_tokens=2)
    text = httpx.get(server.url + "/metrics").text
    requests = _samples(text, "tunelab_requests_total")
    assert requests[(("endpoint", "chat.completions"), ("model", "beta"), ("status", "200"))] == 1
    assert requests[(("endpoint", "completions"), ("model", "beta"), ("status", "200"))] == 1
    # unknown names share one label: a client cannot grow the label set
    assert requests[(("endpoint", "chat.completions"), ("model", "unknown"), ("status", "404"))] == 2
    errors = _samples(text, "tunelab_request_errors_total")
    assert errors[(("endpoint", "chat.completions"), ("model", "unknown"), ("status", "404"),
                   ("type", "invalid_request_error"))] == 2
    tokens = _samples(text, "tunelab_generated_tokens_total")
    assert tokens[(("model", "beta"),)] == r1.usage.completion_tokens + r2.usage.completion_tokens
    assert _samples(text, "tunelab_request_latency_seconds_count")[(("endpoint", "chat.completions"),
                                                                   ("model", "beta"))] == 1
    assert _samples(text, "tunelab_time_to_first_token_seconds_count")[(("endpoint", "completions"),
                                                                       ("model", "beta"))] == 1
    assert _samples(text, "tunelab_engine_queue_depth") and _samples(text, "tunelab_engine_batch_size")
    httpx.post(server.url + "/v1/chat/completions", content=b"{")
    requests = _samples(httpx.get(server.url + "/metrics").text, "tunelab_requests_total")
    assert requests[(("endpoint", "chat.completions"), ("model", "none"), ("status", "400"))] == 1
    # each app has its own registry: a second server starts from zero
    other = httpx.get(serve().url + "/metrics").text
    assert not _samples(other, "tunelab_requests_total")


def test_the_request_log_has_one_line_per_request_without_prompts_or_secrets(serve, make_client, tmp_path):
    log = tmp_path / "requests.jsonl"
    c = make_client(serve(log_path=log))
    secret_prompt = "my private question about payroll"
    r = c.chat.completions.create(model="alpha", messages=[{"role": "user", "content": secret_prompt}],
                                  max_tokens=3, temperature=0)
    key_like = "sk-proj-" + "A1b2C3d4E5f6" * 4
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=key_like, messages=HELLO, max_tokens=2)
    lines = _log_lines(log)
    assert len(lines) == 2
    ok, bad = lines
    assert ok["id"] == r.id and ok["model"] == "alpha" and ok["status"] == 200
    assert ok["prompt_tokens"] == r.usage.prompt_tokens and ok["completion_tokens"] == 3
    assert ok["finish_reason"] == "length" and ok["latency_s"] >= ok["ttft_s"] > 0
    assert bad["status"] == 404 and bad["model"] == "unknown" and bad["error"]
    text = log.read_text()
    assert secret_prompt not in text and key_like not in text


def test_an_engine_failure_is_a_500_in_openai_shape_whole_or_streamed(serve, make_client, engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory on the test device")

    monkeypatch.setattr(engine.real, "_forward", broken)  # the real engine's forward pass fails
    c = make_client(serve())
    with pytest.raises(openai.InternalServerError) as err:
        c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
    assert err.value.body["type"] == "server_error" and "out of memory" in err.value.body["message"]
    with pytest.raises(openai.APIError, match="out of memory"):
        list(c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, stream=True))
    # the engine's scheduler survived the failure: once the forward works again, so does serving
    monkeypatch.undo()
    assert c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3).usage.completion_tokens == 3
