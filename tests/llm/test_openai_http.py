"""The OpenAI-compatible backend against a real loopback server: requests, retries, timeouts, concurrency,
the API key, JSON mode fallback and the circuit breaker."""

from __future__ import annotations

import random
import socket
import time

import pytest

from tunelab.errors import TunelabError
from tunelab.llm import (
    CONNECTION_ERROR,
    HTTP_ERROR,
    INVALID_RESPONSE,
    TIMEOUT,
    OpenAIBackend,
    backend_from_spec,
    backoff_delay,
)

FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05}


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_answers_in_input_order_with_usage(server):
    server.responder = lambda body: "echo " + body["messages"][-1]["content"]
    backend = OpenAIBackend("tiny-model", server.base_url, concurrency=3, **FAST)
    out = backend.complete([conv(f"q{i}") for i in range(7)], temperature=0.2, max_tokens=17, stop=["\n"], seed=5)
    assert [c.text for c in out] == [f"echo q{i}" for i in range(7)]
    assert all(c.ok and c.finish_reason == "stop" and c.attempts == 1 and c.latency_s > 0 for c in out)
    assert out[0].prompt_tokens == 1 and out[0].completion_tokens == 2
    body = server.requests[0]["body"]
    assert body["model"] == "tiny-model" and body["temperature"] == 0.2 and body["max_tokens"] == 17
    assert body["stop"] == ["\n"] and body["seed"] == 5 and "response_format" not in body
    assert server.requests[0]["path"] == "/v1/chat/completions"


def test_api_key_is_sent_as_bearer_and_never_shown(server, monkeypatch, tmp_path, Reply):
    secret = "sk-test-9f8e7d6c5b4a"
    monkeypatch.setenv("TUNELAB_TEST_KEY", secret)
    backend = backend_from_spec(f"openai:m@{server.base_url}", api_key_env="TUNELAB_TEST_KEY",
                                cache=tmp_path / "cache", **FAST)
    server.script(Reply(content="fine"), Reply(status=401))
    out = backend.complete([conv("a")])
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
    out += backend.complete([conv("b")])
    assert out[1].error_kind == HTTP_ERROR and "HTTP 401" in out[1].error and "$TUNELAB_TEST_KEY: set" in out[1].error
    for text in (repr(backend), backend.name, str(backend.identity()), out[1].error, repr(backend.backend)):
        assert secret not in text
    files = list((tmp_path / "cache").rglob("*"))
    assert any(f.suffix == ".json" for f in files)
    for f in files:
        if f.is_file():
            assert secret not in f.read_text()


def test_a_password_in_the_url_is_used_and_never_shown(server, monkeypatch, tmp_path, Reply):
    from tunelab import secrets

    monkeypatch.setattr(secrets, "_REGISTERED", set())
    odd = "odd-shaped-credential-3141"  # in a variable whose name says nothing: masked once the backend read it
    monkeypatch.setenv("TUNELAB_ODD_CRED", odd)
    url = server.base_url.replace("http://", "http://alice:S3cretPw-99@")
    backend = backend_from_spec(f"openai:m@{url}", api_key_env="TUNELAB_ODD_CRED", cache=tmp_path / "cache",
                                **FAST)
    refusal = f'{{"error": "key {odd} refused for S3cretPw-99"}}'  # a server quoting what it was sent
    server.script(Reply(content="fine"), Reply(status=403, raw=refusal))
    out = backend.complete([conv("a")]) + backend.complete([conv("b")])
    assert server.requests[0]["headers"]["Authorization"].startswith("Basic ")  # the password is really used
    shown = server.base_url.replace("http://", "http://alice:***@")
    assert backend.name == f"openai:m@{shown}" and backend.identity()["base_url"] == shown
    assert out[1].error.startswith(f"POST {shown}/chat/completions: HTTP 403")
    assert "key *** refused for ***" in out[1].error
    for f in (tmp_path / "cache").rglob("*.json"):
        assert "S3cretPw-99" not in f.read_text() and odd not in f.read_text()


def test_no_key_means_no_authorization_header(server, monkeypatch):
    monkeypatch.delenv("TUNELAB_NO_SUCH_KEY", raising=False)
    OpenAIBackend("m", server.base_url, api_key_env="TUNELAB_NO_SUCH_KEY").complete([conv("x")])
    assert "Authorization" not in server.requests[0]["headers"]


def test_500_and_429_are_retried_then_succeed(server, Reply):
    server.script(Reply(status=500), Reply(status=429, headers={"Retry-After": "0"}), Reply(content="third time"))
    out = OpenAIBackend("m", server.base_url, max_retries=3, **FAST).complete([conv("x")])
    assert out[0].ok and out[0].text == "third time" and out[0].attempts == 3
    assert len(server.requests) == 3


def test_timeout_is_retried(server, Reply):
    server.script(Reply(delay_s=1.5, content="too late"), Reply(content="in time"))
    start = time.perf_counter()
    out = OpenAIBackend("m", server.base_url, timeout_s=0.3, max_retries=2, **FAST).complete([conv("x")])
    assert out[0].ok and out[0].text == "in time" and out[0].attempts == 2
    assert time.perf_counter() - start < 1.4  # it did not wait for the slow reply


def test_timeouts_until_the_last_retry_fail_with_url(server, Reply):
    server.responder = lambda body: Reply(delay_s=0.8)
    out = OpenAIBackend("m", server.base_url, timeout_s=0.2, max_retries=1, **FAST).complete([conv("x")])
    c = out[0]
    assert not c.ok and c.text is None and c.error_kind == TIMEOUT and c.attempts == 2
    assert f"POST {server.base_url}/chat/completions failed after 2 attempt(s)" in c.error
    assert "no answer within 0.2 s" in c.error


def test_persistent_5xx_fails_after_retries_naming_status(server, Reply):
    server.responder = lambda body: Reply(status=503)
    out = OpenAIBackend("m", server.base_url, max_retries=2, **FAST).complete([conv("x")])
    assert out[0].error_kind == HTTP_ERROR and out[0].attempts == 3 and len(server.requests) == 3
    assert "failed after 3 attempt(s): HTTP 503" in out[0].error and server.base_url in out[0].error


def test_other_4xx_are_not_retried(server, Reply):
    server.responder = lambda body: Reply(status=404)
    out = OpenAIBackend("missing-model", server.base_url, max_retries=4, **FAST).complete([conv("x")])
    assert out[0].error_kind == HTTP_ERROR and out[0].attempts == 1 and len(server.requests) == 1
    assert "HTTP 404" in out[0].error and "model 'missing-model'" in out[0].error


def test_a_200_that_is_not_a_completion_is_an_invalid_response(server, Reply):
    server.script(Reply(raw="<html>proxy page</html>"))
    out = OpenAIBackend("m", server.base_url, **FAST).complete([conv("x")])
    assert out[0].error_kind == INVALID_RESPONSE and "proxy page" in out[0].error


def test_json_mode_falls_back_when_the_server_rejects_response_format(server, Reply):
    def responder(body):
        if "response_format" in body:
            return Reply(status=400, raw='{"error": {"message": "response_format is not supported"}}')
        return '{"ok": true}'

    server.responder = responder
    backend = OpenAIBackend("m", server.base_url, **FAST)
    out = backend.complete([conv("x")], json_mode=True)
    assert out[0].ok and out[0].text == '{"ok": true}'
    assert server.requests[0]["body"]["response_format"] == {"type": "json_object"}
    assert "response_format" not in server.requests[1]["body"]
    assert backend.json_mode_supported is False
    backend.complete([conv("y")], json_mode=True)
    assert len(server.requests) == 3  # no second rejected attempt


def test_requests_really_overlap_up_to_the_limit(server, Reply):
    server.responder = lambda body: Reply(delay_s=0.25, content="slow")
    backend = OpenAIBackend("m", server.base_url, concurrency=4, **FAST)
    start = time.perf_counter()
    out = backend.complete([conv(str(i)) for i in range(12)])
    wall = time.perf_counter() - start
    assert all(c.ok for c in out)
    assert server.max_in_flight == 4
    assert wall < 12 * 0.25 / 2  # 3 waves of 4, not 12 in a row


def test_on_result_reports_each_answer_as_it_arrives(server, Reply):
    server.responder = lambda body: Reply(delay_s=0.3 if body["messages"][0]["content"] == "slow" else 0.0,
                                          content=body["messages"][0]["content"])
    seen = []
    OpenAIBackend("m", server.base_url, concurrency=2).complete([conv("slow"), conv("fast")],
                                                                on_result=lambda i, c: seen.append((i, c.text)))
    assert seen == [(1, "fast"), (0, "slow")]


def test_unreachable_server_trips_the_breaker_quickly():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend("m", f"http://127.0.0.1:{port}/v1", concurrency=1, max_retries=1, breaker=2, **FAST)
    start = time.perf_counter()
    out = backend.complete([conv(str(i)) for i in range(10)])
    assert time.perf_counter() - start < 5
    assert all(c.error_kind == CONNECTION_ERROR for c in out)
    assert "cannot reach the server" in out[0].error
    assert sum("not sent: 2 requests in a row could not connect" in c.error for c in out) == 8


def test_backoff_is_exponential_with_jitter_and_capped():
    rng = random.Random(0)
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 10.0)):
        delays = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and len(set(delays)) > 100  # spread over the range, not fixed
    assert backoff_delay(1, 0.5, 10.0, rng, retry_after=3) >= 3
    assert backoff_delay(1, 0.5, 10.0, rng, retry_after=300) == 10.0


def test_bad_settings_and_specs_are_clear_errors():
    with pytest.raises(TunelabError, match="concurrency must be at least 1"):
        OpenAIBackend("m", "http://localhost:1/v1", concurrency=0)
    with pytest.raises(TunelabError, match="must start with http"):
        OpenAIBackend("m", "localhost:1/v1")
    with pytest.raises(TunelabError, match="has no option.*batch_size.*accepts: api_key_env"):
        backend_from_spec("openai:m@http://localhost:1/v1", batch_size=3)


def test_max_completion_tokens_fallback(server, Reply):
    def responder(body):
        if "max_tokens" in body:
            return Reply(status=400, raw='{"error": {"message": "Unsupported parameter: \'max_tokens\'. '
                                         'Use \'max_completion_tokens\' instead."}}')
        return f"limit {body['max_completion_tokens']}"

    server.responder = responder
    backend = OpenAIBackend("m", server.base_url)
    assert backend.complete([conv("x")], max_tokens=12)[0].text == "limit 12"
    assert backend.complete([conv("y")], max_tokens=7)[0].text == "limit 7"
    assert len(server.requests) == 3  # one rejected request, then the right name every time


def test_ctrl_c_stops_requests_waiting_to_retry(server, Reply):
    import threading

    server.responder = lambda body: (Reply(status=500, headers={"Retry-After": "30"})
                                     if body["messages"][0]["content"] == "fail" else "fine")
    backend = OpenAIBackend("m", server.base_url, concurrency=2, backoff_s=30, backoff_max_s=30)

    def interrupt(i, comp):
        time.sleep(0.2)  # let the failing request reach its backoff wait
        raise KeyboardInterrupt

    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        backend.complete([conv("fine"), conv("fail")], on_result=interrupt)
    deadline = time.time() + 5
    while any(t.name.startswith("tunelab-openai") for t in threading.enumerate()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("tunelab-openai") for t in threading.enumerate())
    assert time.perf_counter() - start < 5  # not the 30 s backoff
    assert sum(r["body"]["messages"][0]["content"] == "fail" for r in server.requests) == 1


def test_a_schema_goes_in_the_request_and_falls_back_step_by_step(server, Reply):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}

    def responder(body):
        fmt = (body.get("response_format") or {}).get("type")
        if fmt == "json_schema":
            return Reply(status=400, raw='{"error": {"message": "json_schema is not supported"}}')
        if fmt == "json_object":
            return Reply(status=422, raw='{"detail": "unknown field response_format"}')
        return '{"ok": true}'

    server.responder = responder
    backend = OpenAIBackend("m", server.base_url, **FAST)
    assert backend.structured_output == "json_schema"
    out = backend.complete([conv("x")], json_schema=schema)
    assert out[0].ok and out[0].text == '{"ok": true}' and out[0].attempts == 1
    sent = [r["body"].get("response_format") for r in server.requests]
    assert sent == [{"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
                    {"type": "json_object"}, None]
    assert backend.structured_output == "prompt"
    backend.complete([conv("y"), conv("z")], json_schema=[schema, schema])
    assert len(server.requests) == 5  # each step down was taken once, not per request


def test_a_server_that_takes_json_mode_but_not_schemas_stays_in_json_mode(server, Reply):
    def responder(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return Reply(status=400, raw='{"error": "response_format json_schema: unsupported"}')
        return '{"ok": true}'

    server.responder = responder
    backend = OpenAIBackend("m", server.base_url, **FAST)
    backend.complete([conv("x")], json_schema={"type": "object"})
    assert backend.structured_output == "json_object"
    assert server.requests[-1]["body"]["response_format"] == {"type": "json_object"}
