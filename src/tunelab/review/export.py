"""Ratings out of the store: as rating records (the agreed JSONL format, one judgement a line) and as
preference records {"prompt", "chosen", "rejected"} that `tunelab data prepare` reads as its preference
format and DPO trains on.

Only a decided judgement is a preference: a tie or "both wrong" says neither answer should be preferred.
When several reviewers judged the same two answers to one question, the majority decides and a split
vote gives no record (a pair and its reverse would teach DPO nothing but noise).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import write_jsonl
from .store import Rating

KINDS = ("ratings", "preferences")


def rating_rows(ratings: list[Rating]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in ratings]


def preference_rows(ratings: list[Rating]) -> list[dict[str, str]]:
    """One {"prompt", "chosen", "rejected"} per question and pair of distinct, non-empty answers that the
    reviewers' majority preferred one way."""
    votes: dict[tuple[str, str, frozenset[str]], Counter[str]] = {}
    prompts: dict[tuple[str, str, frozenset[str]], str] = {}
    for r in ratings:
        if r.choice not in ("a", "b") or r.answer_a == r.answer_b:
            continue
        if not r.answer_a.strip() or not r.answer_b.strip() or not r.question.strip():
            continue  # an empty reply is no preference data prepare can keep
        key = (r.experiment, r.question_id, frozenset((r.answer_a, r.answer_b)))
        winner = r.answer_a if r.choice == "a" else r.answer_b
        votes.setdefault(key, Counter())[winner] += 1
        prompts.setdefault(key, r.question)
    out = []
    for key, counter in votes.items():
        ranked = counter.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            continue  # reviewers split evenly: no preference
        chosen = ranked[0][0]
        rejected = next(a for a in key[2] if a != chosen)
        out.append({"prompt": prompts[key], "chosen": chosen, "rejected": rejected})
    return out


def write_export(ratings: list[Rating], out: str | Path, kind: str) -> int:
    """Write `kind` records to a new file `out` (atomically; an existing file is never replaced)."""
    if kind not in KINDS:
        raise TunelabError(f"--format: '{kind}' is not one of {', '.join(KINDS)}")
    out = Path(out)
    if out.exists():
        raise TunelabError(f"{out}: already exists; name a new file (an export never replaces a file)")
    if not out.parent.is_dir():
        raise TunelabError(f"{out}: directory {out.parent} does not exist")
    rows = rating_rows(ratings) if kind == "ratings" else preference_rows(ratings)
    return write_jsonl(out, rows)
