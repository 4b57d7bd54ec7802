"""The feedback store and `data prepare` reading it as preference records."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tunelab.config import DataConfig, SplitConfig
from tunelab.data.feedback import NO_PREFERRED, SAME_ANSWER, FeedbackStore, preference_rows
from tunelab.data.prepare import load_manifest, load_split, run
from tunelab.errors import TunelabError

Q = [{"role": "system", "content": "Answer from the handbook."}, {"role": "user", "content": "How many leave days?"}]


def _store(path) -> FeedbackStore:
    store = FeedbackStore(path)
    store.add_completion("c1", "support", Q, "Ten days.", "stop")
    store.add_completion("c2", "support", [{"role": "user", "content": "When is payday?"}], "Never.", "stop")
    store.add_completion("c3", "tiny", "Complete: the sky is", " green", "length")
    store.add_completion("c4", "support", [{"role": "user", "content": "Who approves travel?"}], "Finance.", "stop")
    store.add_feedback("c1", rating=-1, preferred_answer="Employees get 27 days of paid leave.", note="wrong")
    store.add_feedback("c2", rating=-1)  # a thumbs-down alone: no pair
    store.add_feedback("c3", preferred_answer=" blue")
    store.add_feedback("c4", rating=1, preferred_answer="Finance.")  # the same answer: no pair
    store.close()
    return store


def test_feedback_with_a_preferred_answer_becomes_a_pair_and_the_rest_is_counted(tmp_path):
    db = tmp_path / "feedback.db"
    _store(db)
    rows, skipped = preference_rows(db)
    assert skipped == {NO_PREFERRED: 1, SAME_ANSWER: 1}
    pairs = [r for _, r in rows]
    assert pairs[0]["prompt"] == Q and pairs[0]["chosen"] == "Employees get 27 days of paid leave."
    assert pairs[0]["rejected"] == "Ten days." and pairs[0]["meta"]["completion_id"] == "c1"
    assert pairs[0]["meta"]["note"] == "wrong" and pairs[0]["meta"]["served_model"] == "support"
    assert pairs[1]["prompt"] == "Complete: the sky is" and pairs[1]["chosen"] == " blue"


def test_data_prepare_reads_a_feedback_database_as_preference_records(tmp_path):
    db = tmp_path / "feedback.db"
    _store(db)
    run(DataConfig(train=[db], split=SplitConfig(train=1.0, validation=0.0), pii="off", dedup="none"),
        tmp_path / "out")
    records = load_split(tmp_path / "out", "train")
    assert [r.kind for r in records] == ["preference", "preference"]
    assert records[0].messages == Q and records[0].chosen == "Employees get 27 days of paid leave."
    assert records[1].messages == [{"role": "user", "content": "Complete: the sky is"}]
    manifest = load_manifest(tmp_path / "out")
    assert manifest["formats"] == {str(db): "preference"}
    assert manifest["removed"] == {NO_PREFERRED: 1, SAME_ANSWER: 1}


def test_a_database_with_no_pair_yet_is_a_clear_error(tmp_path):
    db = tmp_path / "feedback.db"
    store = FeedbackStore(db)
    store.add_completion("c1", "m", Q, "Ten days.")
    store.add_feedback("c1", rating=-1)
    store.close()
    with pytest.raises(TunelabError, match="no feedback with a preferred answer"):
        run(DataConfig(train=[db]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_feedback_for_an_unknown_completion_or_without_content_is_refused(tmp_path):
    store = FeedbackStore(tmp_path / "f.db")
    with pytest.raises(TunelabError, match="no completion 'nope'"):
        store.add_feedback("nope", rating=1)
    store.add_completion("c1", "m", Q, "a")
    with pytest.raises(TunelabError, match="rating"):
        store.add_feedback("c1")
    with pytest.raises(TunelabError, match="rating 5"):
        store.add_feedback("c1", rating=5)


def test_another_sqlite_file_is_refused_and_left_alone(tmp_path):
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(TunelabError, match="something else"):
        FeedbackStore(other)
    assert other.read_bytes() == before
    (tmp_path / "text.db").write_text("not a database at all, just text " * 100)
    with pytest.raises(TunelabError, match="not an SQLite database"):
        FeedbackStore(tmp_path / "text.db")


def test_secrets_in_prompts_and_answers_are_masked_before_they_are_stored(tmp_path):
    db = tmp_path / "f.db"
    key = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ"
    store = FeedbackStore(db)
    store.add_completion("c1", "m", [{"role": "user", "content": f"my token is {key}"}], f"use {key}")
    store.add_feedback("c1", preferred_answer=f"never paste {key}", note=key)
    store.close()
    assert key.encode() not in db.read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("f.db-*"))
    assert json.dumps(preference_rows(db)[0]).count("***") == 4
