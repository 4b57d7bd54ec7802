"""The disk cache of calls over the real HTTP backend: a re-run sends nothing, an interrupted run resumes,
failures are not cached, keys depend on every parameter, broken files are misses."""

from __future__ import annotations

import json

import pytest

from tunelab.llm import CachedBackend, CallCache, OpenAIBackend, call_key


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def echo(server):
    server.responder = lambda body: "answer to " + body["messages"][-1]["content"]
    return server


def cached(server, tmp_path, **kw) -> CachedBackend:
    return CachedBackend(OpenAIBackend("m", server.base_url, backoff_s=0.01, **kw), CallCache(tmp_path / "calls"))


def test_second_run_makes_no_http_call(echo, tmp_path):
    convs = [conv(f"q{i}") for i in range(6)]
    first = cached(echo, tmp_path).complete(convs, max_tokens=20)
    assert len(echo.requests) == 6 and not any(c.cached for c in first)
    again = cached(echo, tmp_path)  # a new process: a new backend and cache object on the same directory
    second = again.complete(convs, max_tokens=20)
    assert len(echo.requests) == 6  # zero new requests
    assert [c.text for c in second] == [c.text for c in first] and all(c.cached for c in second)
    assert again.cache.stats()["hits"] == 6 and again.cache.stats()["misses"] == 0


def test_interrupted_run_resumes_without_paying_twice(echo, tmp_path):
    convs = [conv(f"q{i}") for i in range(8)]
    backend = cached(echo, tmp_path, concurrency=1)
    got = []

    def interrupt_after_three(i, comp):
        got.append(i)
        if len(got) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backend.complete(convs, on_result=interrupt_after_three)
    resumed = cached(echo, tmp_path, concurrency=1)
    out = resumed.complete(convs)
    assert all(c.ok for c in out) and [c.text for c in out] == [f"answer to q{i}" for i in range(8)]
    # The three answered before the interrupt were each sent once, ever: the resumed run took them from
    # the cache. (The request in flight at the interrupt may still reach the server after it; counting
    # requests per question keeps that race out of the check.)
    sent = [r["body"]["messages"][-1]["content"] for r in echo.requests]
    assert [sent.count(f"q{i}") for i in got] == [1, 1, 1]
    assert resumed.cache.stats()["hits"] == 3 and resumed.cache.stats()["misses"] == 5


def test_failures_are_not_cached(server, tmp_path, Reply):
    server.script(Reply(status=400))
    first = cached(server, tmp_path).complete([conv("x")])
    assert first[0].error_kind == "http_error"
    second = cached(server, tmp_path).complete([conv("x")])
    assert second[0].ok and len(server.requests) == 2


def test_key_covers_backend_messages_and_every_parameter():
    ident = {"kind": "openai", "model": "m", "base_url": "http://x/v1"}
    params = {"temperature": 0.0, "max_tokens": 10, "stop": [], "seed": None, "json_mode": False}
    base = call_key(ident, conv("a"), params)
    assert base == call_key(dict(reversed(list(ident.items()))), conv("a"), params)  # key order is irrelevant
    assert base != call_key({**ident, "model": "n"}, conv("a"), params)
    assert base != call_key({**ident, "base_url": "http://y/v1"}, conv("a"), params)
    assert base != call_key(ident, conv("b"), params)
    for change in ({"temperature": 0.5}, {"max_tokens": 11}, {"stop": ["\n"]}, {"seed": 1}, {"json_mode": True}):
        assert base != call_key(ident, conv("a"), {**params, **change}), change


def test_key_keeps_host_and_user_but_not_the_password():
    # the same model on the same host answers the same whatever the credential: a rotated password keeps
    # the cache, and no key is a hash of a password
    params = {"temperature": 0.0, "max_tokens": 10, "stop": [], "seed": None, "json_mode": False}
    urls = ("http://alice:pw-one-1234@h/v1", "http://alice:pw-two-5678@h/v1", "http://bob:pw-one-1234@h/v1",
            "http://alice:pw-one-1234@other/v1")
    keys = [call_key(OpenAIBackend("m", url).identity(), conv("a"), params) for url in urls]
    assert keys[0] == keys[1] and len(set(keys)) == 3
    # a backend from elsewhere that puts a credential in its identity is masked too
    ident = {"kind": "custom", "model": "m", "api_key": "inline-credential-1"}
    other = {**ident, "api_key": "inline-credential-2"}
    assert call_key(ident, conv("a"), params) == call_key(other, conv("a"), params)


def test_a_broken_cache_file_is_a_miss_and_is_rewritten(echo, tmp_path):
    backend = cached(echo, tmp_path)
    backend.complete([conv("q")])
    (file,) = [p for p in (tmp_path / "calls").rglob("*.json")]
    file.write_text('{"completion": {"text": "trunc')  # a torn write from some other tool
    out = cached(echo, tmp_path).complete([conv("q")])
    assert out[0].text == "answer to q" and len(echo.requests) == 2
    assert json.loads(file.read_text())["completion"]["text"] == "answer to q"
    record = json.loads(file.read_text())
    assert record["request"]["messages"] == conv("q") and record["request"]["backend"]["model"] == "m"
    assert not list((tmp_path / "calls").rglob("*.tmp"))  # atomic writes leave no temporaries


def test_a_json_schema_is_part_of_the_key_and_no_schema_keeps_the_old_key(echo, tmp_path):
    params = {"temperature": 0.0, "max_tokens": 256, "stop": [], "seed": None, "json_mode": False}
    backend = cached(echo, tmp_path)
    ident = backend.identity()
    backend.complete([conv("q")])
    assert backend.cache.path(call_key(ident, conv("q"), params)).is_file()  # as before schemas existed
    one, two = {"type": "object"}, {"type": "object", "properties": {"a": {"type": "string"}}}
    backend.complete([conv("q"), conv("q")], json_schema=[one, two])
    assert len(echo.requests) == 3  # each schema is a call of its own
    again = cached(echo, tmp_path).complete([conv("q")], json_schema=two)
    assert again[0].cached and len(echo.requests) == 3
