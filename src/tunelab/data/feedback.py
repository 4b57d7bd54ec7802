"""Feedback on served answers, kept in SQLite, and turned into preference records.

The server (tunelab.serve.app, started with --feedback-db) writes here; `tunelab data prepare FILE.db`
reads it back. It lives in data, not serve, because data must not import serve.

Two tables:
- completions: every answer the server gave (id, model, the prompt as a JSON message list or a plain
  completions-API string, the answer, when);
- feedback: what a user said about one of them (completion id, rating -1/0/1, a preferred answer, a
  note, when). A completion may get feedback more than once.

As preference records (the `preference` format of formats.py: prompt, chosen, rejected): feedback with a
preferred answer is a pair, chosen = the preferred answer, rejected = the answer served. Feedback
without one (a thumbs-down, or a thumbs-up, alone) is not a pair: it is counted by reason, never turned
into a made-up pair. A preferred answer equal to the served one teaches nothing and is counted too.

Everything stored passes tunelab.secrets' redactor: a key pasted into a chat must not land in a file.
The file is recognised by its `tunelab_feedback` table; an SQLite file of anything else is refused, never
altered.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..secrets import redact

SUFFIXES = (".db", ".sqlite", ".sqlite3")
FORMAT = 1
_MARKER = "tunelab_feedback"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_MARKER} (format INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, messages TEXT NOT NULL, answer TEXT NOT NULL,
    finish_reason TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, completion_id TEXT NOT NULL REFERENCES completions(id), rating INTEGER,
    preferred_answer TEXT, note TEXT, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_completion ON feedback(completion_id);
"""
# reasons a feedback entry gives no preference pair (counted in `tunelab data prepare`'s manifest)
NO_PREFERRED = "feedback_without_preferred_answer"
SAME_ANSWER = "feedback_preferred_equals_served"


class FeedbackStore:
    """The feedback database, safe to use from several threads (one connection, one lock)."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise TunelabError(f"{self.path}: no such feedback database")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise TunelabError(f"{self.path}: not an SQLite database ({exc}); give a new file or a feedback "
                               "database tunelab wrote") from None
        if tables and _MARKER not in tables:
            self._db.close()
            raise TunelabError(f"{self.path}: an SQLite database of something else (tables: "
                               f"{', '.join(sorted(tables))}); give a new file or a feedback database tunelab "
                               "wrote (it is left as it is)")
        if not tables:
            if not create:
                raise TunelabError(f"{self.path}: an empty SQLite file, not a tunelab feedback database")
            self._db.execute("PRAGMA journal_mode=WAL")  # the server writes while `data prepare` may read
            self._db.executescript(_SCHEMA)
            self._db.execute(f"INSERT INTO {_MARKER} VALUES (?)", (FORMAT,))
        version = self._db.execute(f"SELECT format FROM {_MARKER}").fetchone()
        if not version or version[0] != FORMAT:
            raise TunelabError(f"{self.path}: feedback database format {version and version[0]}; this tunelab "
                               f"reads format {FORMAT}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_completion(self, completion_id: str, model: str, messages: list[dict[str, str]] | str,
                       answer: str, finish_reason: str | None = None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?)",
                             (completion_id, model, json.dumps(redact(messages), ensure_ascii=False),
                              redact(answer), finish_reason, time.time()))

    def completion(self, completion_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT id, model, messages, answer, finish_reason, created FROM completions "
                                   "WHERE id = ?", (completion_id,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "model": row[1], "messages": json.loads(row[2]), "answer": row[3],
                "finish_reason": row[4], "created": row[5]}

    def add_feedback(self, completion_id: str, *, rating: int | None = None, preferred_answer: str | None = None,
                     note: str | None = None) -> str:
        """Store feedback on a stored completion; the feedback's id. An unknown completion id is an error."""
        if rating is None and not preferred_answer:
            raise TunelabError("feedback needs a rating (-1, 0 or 1) or a preferred answer")
        if rating is not None and rating not in (-1, 0, 1):
            raise TunelabError(f"rating {rating!r}: give -1 (bad), 0 or 1 (good)")
        feedback_id = "fb-" + uuid.uuid4().hex
        with self._lock:
            known = self._db.execute("SELECT 1 FROM completions WHERE id = ?", (completion_id,)).fetchone()
            if known is None:
                raise TunelabError(f"no completion '{completion_id}' is stored here")
            self._db.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?)",
                             (feedback_id, completion_id, rating,
                              None if preferred_answer is None else redact(preferred_answer),
                              None if note is None else redact(note), time.time()))
        return feedback_id

    def joined(self) -> Iterator[tuple[Any, ...]]:
        """(feedback id, rating, preferred, note, created, completion id, model, messages JSON, answer),
        oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT f.id, f.rating, f.preferred_answer, f.note, f.created, c.id, c.model, c.messages, c.answer "
                "FROM feedback f JOIN completions c ON c.id = f.completion_id ORDER BY f.created, f.rowid"
            ).fetchall()
        yield from rows


def is_feedback_db(path: str | Path) -> bool:
    """Whether `path` names a feedback database by its suffix (what it holds is checked when it is read)."""
    return Path(path).suffix.lower() in SUFFIXES


def preference_rows(path: str | Path) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, int]]:
    """([(row number, preference row)], {reason: count of feedback that gave no pair}).

    A row is {"prompt", "chosen", "rejected", "meta"} with meta naming the completion, the feedback,
    the model that answered and the rating, so a record can be traced back to what was served."""
    store = FeedbackStore(path, create=False)
    rows: list[tuple[int, dict[str, Any]]] = []
    skipped: dict[str, int] = {}
    try:
        for n, (fid, rating, preferred, note, created, cid, model, messages, answer) in enumerate(store.joined(), 1):
            reason = None
            if not preferred:
                reason = NO_PREFERRED
            elif preferred.strip() == answer.strip():
                reason = SAME_ANSWER
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            meta = {"completion_id": cid, "feedback_id": fid, "served_model": model, "rating": rating,
                    "feedback_created": created}
            if note:
                meta["note"] = note
            rows.append((n, {"prompt": json.loads(messages), "chosen": preferred, "rejected": answer, "meta": meta}))
    finally:
        store.close()
    return rows, skipped
