"""POST /v1/feedback on answers the server gave, round-tripped through `tunelab data prepare` into
preference records."""

from __future__ import annotations

import json

import httpx
from typer.testing import CliRunner

from tunelab.cli import app as cli
from tunelab.data.clean import CleanOptions, clean_text
from tunelab.data.feedback import NO_PREFERRED


def test_feedback_round_trips_into_preference_records(serve, make_client, tmp_path):
    db = tmp_path / "feedback.db"
    server = serve(feedback_db=db)
    c = make_client(server)
    asks = [[{"role": "user", "content": f"question {i}"}] for i in range(4)]
    ids, answers = [], []
    for i, messages in enumerate(asks):
        if i == 3:  # a streamed answer is stored too, whole
            chunks = list(c.chat.completions.create(model="alpha", messages=messages, max_tokens=5, temperature=0,
                                                    stream=True))
            ids.append(chunks[0].id)
            answers.append("".join(ch.choices[0].delta.content or "" for ch in chunks))
        else:
            r = c.chat.completions.create(model="alpha", messages=messages, max_tokens=5, temperature=0)
            ids.append(r.id)
            answers.append(r.choices[0].message.content)
    sent = [
        {"completion_id": ids[0], "rating": -1, "preferred_answer": "The first better answer."},
        {"completion_id": ids[1], "rating": -1},  # a thumbs-down alone is not a pair
        {"completion_id": ids[2], "preferred_answer": "The second better answer.", "note": "too short"},
        {"completion_id": ids[3], "rating": 0, "preferred_answer": "The streamed one, improved."},
    ]
    for body in sent:
        r = httpx.post(server.url + "/v1/feedback", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["completion_id"] == body["completion_id"] and r.json()["id"].startswith("fb-")

    out = tmp_path / "prefs"
    result = CliRunner().invoke(cli, ["data", "prepare", str(db), "--out", str(out), "--split", "1,0",
                                      "--dedup", "none", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"] == {NO_PREFERRED: 1}
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["preference"] * 3
    by_prompt = {r["messages"][-1]["content"]: r for r in records}
    for i, chosen in ((0, "The first better answer."), (2, "The second better answer."),
                      (3, "The streamed one, improved.")):
        rec = by_prompt[f"question {i}"]
        # prepare cleans text as it cleans any input (the random model's answers hold control characters)
        served = clean_text(answers[i], CleanOptions())
        assert rec["messages"] == asks[i] and rec["chosen"] == chosen and rec["rejected"] == served
        assert rec["meta"]["completion_id"] == ids[i] and rec["meta"]["served_model"] == "alpha"


def test_feedback_errors_are_openai_shaped(serve, tmp_path):
    server = serve(feedback_db=tmp_path / "f.db")
    r = httpx.post(server.url + "/v1/feedback", json={"completion_id": "chatcmpl-nope", "rating": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "completion_not_found"
    r = httpx.post(server.url + "/v1/feedback", json={"completion_id": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rating"
    r = httpx.post(server.url + "/v1/feedback", json={"completion_id": "x", "rating": 7})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rating"
    off = serve()  # no --feedback-db
    r = httpx.post(off.url + "/v1/feedback", json={"completion_id": "x", "rating": 1})
    assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_disabled"
