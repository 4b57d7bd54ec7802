"""Which two answers a reviewer sees next: a question and two variants' answers, in random order.

Candidates are every question and unordered pair of variants whose two answers differ (identical
answers need no judgement), less the ones this reviewer already rated in either order. The pick and
the A/B order are random (the system's random source), so neither the position nor the sequence hints at
which variant is which.
"""

from __future__ import annotations

import random
from itertools import combinations

_RANDOM = random.SystemRandom()


def candidate_pairs(answers: dict[str, dict[str, str]],
                    rated: set[tuple[str, frozenset[str]]]) -> list[tuple[str, str, str]]:
    """(question id, variant, variant) for every pair still to rate; `answers`: variant -> question id ->
    answer; `rated`: (question id, {variant, variant}) already judged by this reviewer."""
    labels = sorted(answers)
    qids: dict[str, None] = {}
    for per in answers.values():
        qids.update(dict.fromkeys(per))
    out = []
    for qid in qids:
        for va, vb in combinations(labels, 2):
            a, b = answers[va].get(qid), answers[vb].get(qid)
            if a is None or b is None or a == b or (qid, frozenset((va, vb))) in rated:
                continue
            out.append((qid, va, vb))
    return out


def pick_pair(candidates: list[tuple[str, str, str]],
              rng: random.Random | None = None) -> tuple[str, str, str] | None:
    """One candidate, its two variants in random order (the first is shown as A); None when none is left."""
    if not candidates:
        return None
    rng = rng or _RANDOM
    qid, va, vb = rng.choice(candidates)
    return (qid, va, vb) if rng.random() < 0.5 else (qid, vb, va)
