"""JSON-constrained calls: extraction from messy replies, validation, retries of failing items only, and
failures that keep their reason."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field

from tunelab.llm import (
    HTTP_ERROR,
    INVALID_JSON,
    SCHEMA_MISMATCH,
    OpenAIBackend,
    complete_structured,
    done_counter,
    extract_json,
    parse_reply,
)


class Rating(BaseModel):
    reason: str
    score: int = Field(ge=1, le=5)


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("text, expected", [
    ('{"score": 3, "reason": "ok"}', {"score": 3, "reason": "ok"}),
    ('```json\n{"score": 4, "reason": "fine"}\n```', {"score": 4, "reason": "fine"}),
    ('Sure! Here is my grade:\n```\n{"score": 2, "reason": "meh"}\n```\nHope it helps.', {"score": 2, "reason": "meh"}),
    ('My verdict is {"score": 5, "reason": "a {nested} brace"} and that is final.', {"score": 5, "reason": "a {nested} brace"}),
    ('{broken, then {"score": 1, "reason": "second object"}', {"score": 1, "reason": "second object"}),
])
def test_extract_json_tolerates_fences_and_prose(text, expected):
    assert extract_json(text) == expected


@pytest.mark.parametrize("text, kind, message", [
    ("", INVALID_JSON, "empty"),
    ("I think it deserves a four.", INVALID_JSON, "no JSON object"),
    ('{"score": 4', INVALID_JSON, "no JSON object"),
    ("[1, 2]", SCHEMA_MISMATCH, "expected a JSON object, got a JSON list"),
    ('{"score": 9, "reason": "x"}', SCHEMA_MISMATCH, "score: Input should be less than or equal to 5"),
    ('{"score": 3}', SCHEMA_MISMATCH, "reason: Field required"),
    ('{"score": 3.5, "reason": "x"}', SCHEMA_MISMATCH, "score"),
])
def test_parse_reply_names_the_failure(text, kind, message):
    value, got_kind, error = parse_reply(text, Rating)
    assert value is None and got_kind == kind and message in error


def test_retries_only_the_failing_items_with_the_error_appended(server, Reply):
    def responder(body):
        msgs = body["messages"]
        q = msgs[0]["content"]
        if q == "good":
            return '{"reason": "clear", "score": 4}'
        if len(msgs) == 1:  # first try of "fixable": prose only
            return "It is pretty good, four out of five."
        return '```json\n{"reason": "fixed", "score": 3}\n```'

    server.responder = responder
    backend = OpenAIBackend("m", server.base_url, concurrency=2)
    out = complete_structured(backend, [conv("good"), conv("fixable")], Rating, retries=2)
    assert out[0].ok and out[0].value.score == 4 and out[0].attempts == 1
    assert out[1].ok and out[1].value == Rating(reason="fixed", score=3) and out[1].attempts == 2
    assert len(server.requests) == 3  # "good" was not asked again
    retry = server.requests[2]["body"]["messages"]
    assert retry[1] == {"role": "assistant", "content": "It is pretty good, four out of five."}
    # the re-ask shows the reply's shape, never the raw JSON schema a small model would copy back
    assert "no JSON object found" in retry[2]["content"]
    assert '{"reason": "...", "score": 1 to 5}' in retry[2]["content"] and "maximum" not in retry[2]["content"]
    formats = [r["body"]["response_format"] for r in server.requests]
    assert all(f["type"] == "json_schema" and f["json_schema"]["schema"]["additionalProperties"] is False
               for f in formats)


def test_gives_up_with_the_reason_never_a_default(server):
    server.responder = lambda body: '{"reason": "too generous", "score": 7}'
    out = complete_structured(OpenAIBackend("m", server.base_url), [conv("x")], Rating, retries=2)
    r = out[0]
    assert not r.ok and r.value is None and r.attempts == 3
    assert r.error_kind == SCHEMA_MISMATCH and "less than or equal to 5" in r.error
    assert r.text == '{"reason": "too generous", "score": 7}'


def test_transport_failures_keep_their_kind_and_are_not_re_asked(server, Reply):
    server.responder = lambda body: Reply(status=403)
    out = complete_structured(OpenAIBackend("m", server.base_url), [conv("x")], Rating, retries=3)
    assert out[0].error_kind == HTTP_ERROR and "HTTP 403" in out[0].error and out[0].attempts == 1
    assert len(server.requests) == 1


def test_a_check_rejects_and_retries_a_valid_looking_value(server, Reply):
    server.script(Reply(content='{"reason": "r", "score": 5}'), Reply(content='{"reason": "r", "score": 2}'))
    out = complete_structured(OpenAIBackend("m", server.base_url), [conv("x")], Rating, retries=1,
                              check=lambda i, v: "must be even" if v.score % 2 else None)
    assert out[0].ok and out[0].value.score == 2 and out[0].attempts == 2
    assert "must be even" in server.requests[1]["body"]["messages"][-1]["content"]


def test_on_done_reports_each_item_once_as_soon_as_it_is_final(server):
    def responder(body):
        msgs = body["messages"]
        if msgs[0]["content"] == "fixable" and len(msgs) == 1:
            return "four, I suppose"
        return '{"reason": "r", "score": 4}'

    server.responder = responder
    done: list[tuple[int, bool, int]] = []  # (item, ok, requests the server had seen then)
    out = complete_structured(OpenAIBackend("m", server.base_url, concurrency=1),
                              [conv("a"), conv("fixable"), conv("c")], Rating, retries=2,
                              on_done=lambda i, r: done.append((i, r.ok, len(server.requests))))
    assert all(r.ok for r in out)
    # "a" is reported while the batch is still being answered; "fixable" only after its re-ask
    assert done == [(0, True, 1), (2, True, 3), (1, True, 4)]


def test_on_done_also_counts_failures_and_answers_of_a_backend_that_reports_none(server):
    class Quiet:  # returns the batch at the end and never calls on_result
        name = "quiet"

        def complete(self, conversations, **_):
            from tunelab.llm.spec import Completion

            return [Completion(text="not json") for _ in conversations]

    done = []
    counter = done_counter(lambda d, t: done.append((d, t)), 2)
    out = complete_structured(Quiet(), [conv("x"), conv("y")], Rating, retries=1, on_done=counter)
    assert [r.attempts for r in out] == [2, 2] and not any(r.ok for r in out)
    assert done == [(0, 2), (1, 2), (2, 2)]
