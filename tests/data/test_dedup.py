"""Exact and near-duplicate removal, MinHash estimates, LSH parameters and train->eval leak checks."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tunelab.data.dedup import (
    _near_duplicate_mask,
    choose_bands,
    exact_dedup,
    minhash_signatures,
    near_dedup,
    normalise_for_exact,
    remove_leaks,
)
from tunelab.data.records import Record
from tunelab.errors import TunelabError

WORDS = (
    "policy leave annual employee manager request approval days salary report office travel expense "
    "receipt deadline holiday contract training review project budget team meeting schedule laptop"
).split()


def long_text(seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 9)) for _ in range(n))


def chat(user: str, assistant: str, line: int = 0, file: str = "train.jsonl") -> Record:
    return Record(
        kind="chat",
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        meta={"file": file, "line": line},
    )


def text(s: str, line: int = 0) -> Record:
    return Record(kind="text", text=s, meta={"file": "t.jsonl", "line": line})


def true_jaccard(a: str, b: str, k: int = 5) -> float:
    def shingles(s: str) -> set[tuple[str, ...]]:
        w = s.lower().split()
        return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}

    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


# ------------------------------------------------------------------------------------------- exact
def test_exact_dedup_keeps_the_first_occurrence() -> None:
    records = [
        chat("What is the leave policy?", "25 days.", 1),
        chat("what is the LEAVE policy", "25 days!!", 2),  # same after casefold/punctuation
        chat("What is the leave   policy?", "25\n days.", 3),  # same after whitespace collapse
        chat("What is the leave policy?", "30 days.", 4),
    ]
    kept, removed = exact_dedup(records)
    assert removed == 2
    assert [r.meta["line"] for r in kept] == [1, 4]


def test_exact_dedup_respects_roles_and_labels() -> None:
    a = Record(kind="label", text="great product", label="pos")
    b = Record(kind="label", text="great product", label="neg")
    assert exact_dedup([a, b])[1] == 0
    swapped = Record(
        kind="chat", messages=[{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]
    )
    normal = Record(
        kind="chat", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    )
    assert exact_dedup([normal, swapped])[1] == 0


def test_normalise_for_exact() -> None:
    assert normalise_for_exact("  Héllo,\tWORLD!! «ok» ") == "héllo world ok"


# ------------------------------------------------------------------------------------------ minhash
def test_signatures_estimate_jaccard_and_are_deterministic() -> None:
    a = long_text(1, 120)
    words = a.split()
    words[30] = "CHANGED"
    words[90] = "AGAIN"
    b = " ".join(words)
    sig = minhash_signatures([a, b, long_text(2, 120)], num_perm=512, seed=7)
    assert sig.dtype == np.uint32 and sig.shape == (3, 512)
    est = float((sig[0] == sig[1]).mean())
    assert abs(est - true_jaccard(a, b)) < 0.08
    assert (sig[0] == sig[2]).mean() < 0.05
    again = minhash_signatures([a, b, long_text(2, 120)], num_perm=512, seed=7)
    assert np.array_equal(sig, again)
    other_seed = minhash_signatures([a], num_perm=512, seed=8)
    assert not np.array_equal(sig[:1], other_seed)


def test_signature_of_a_text_does_not_depend_on_its_batch() -> None:
    texts = [long_text(i, 30) for i in range(50)]
    together = minhash_signatures(texts, num_perm=64)
    alone = np.vstack([minhash_signatures([t], num_perm=64) for t in texts[::7]])
    assert np.array_equal(together[::7], alone)


def test_long_documents_are_hashed_in_slices_with_the_same_result(monkeypatch) -> None:
    from tunelab.data import dedup

    texts = ["a short one here", long_text(11, 3000), "another short one", long_text(12, 50)]
    whole = minhash_signatures(texts, num_perm=32)
    monkeypatch.setattr(dedup, "_MAX_BLOCK", 100)
    monkeypatch.setattr(dedup, "_SHINGLES_PER_BLOCK", 64)
    assert np.array_equal(minhash_signatures(texts, num_perm=32), whole)


def test_short_and_empty_texts_get_signatures() -> None:
    sig = minhash_signatures(["", "two words", "two words", "Two, words!", "other words"], num_perm=32)
    assert np.array_equal(sig[1], sig[2]) and np.array_equal(sig[1], sig[3])
    assert not np.array_equal(sig[1], sig[4])


def test_choose_bands_tracks_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.85, 0.95):
        bands, rows = choose_bands(threshold, 128)
        assert bands * rows <= 128
        midpoint = (1 / bands) ** (1 / rows)  # where the LSH S-curve crosses 1/2... roughly
        assert abs(midpoint - threshold) < 0.15
    assert choose_bands(0.9, 128)[1] > choose_bands(0.5, 128)[1]


# -------------------------------------------------------------------------------------------- near
def test_near_dedup_removes_a_one_word_edit_of_a_long_text() -> None:
    original = long_text(3, 200)
    words = original.split()
    words[100] = "edited"
    records = [text(original, 1), text(long_text(4, 200), 2), text(" ".join(words), 3)]
    kept, removed = near_dedup(records, threshold=0.85)
    assert removed == 1
    assert [r.meta["line"] for r in kept] == [1, 2]


def test_near_dedup_finds_most_pairs_just_above_the_threshold() -> None:
    # 20 pairs with true Jaccard ~0.9: the LSH parameters favour recall, and verification keeps it honest.
    records, pairs = [], 0
    for i in range(20):
        a = long_text(100 + i, 400).split()
        b = a[:]
        for pos in (50, 150, 250, 350):
            b[pos] = "edit"
        if 0.88 <= true_jaccard(" ".join(a), " ".join(b)) <= 0.92:
            pairs += 1
        records += [text(" ".join(a)), text(" ".join(b))]
    assert pairs == 20
    _, removed = near_dedup(records, threshold=0.85)
    assert removed >= 17


def test_near_dedup_keeps_different_texts() -> None:
    records = [text(long_text(i, 80), i) for i in range(30)]
    kept, removed = near_dedup(records, threshold=0.85)
    assert removed == 0 and len(kept) == 30


def test_lsh_candidates_are_verified_before_removal() -> None:
    # Two signatures equal in exactly one LSH band: LSH makes them candidates, but their estimated
    # Jaccard is rows/128, far below the threshold, so nothing may be removed.
    bands, rows = choose_bands(0.85, 128)
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**31 - 1, size=(3, 128), dtype=np.uint32)
    sig[1, :rows] = sig[0, :rows]
    sig[2] = sig[0]
    sig[2, -1] += 1  # 127/128 equal: a true near duplicate of row 0
    assert _near_duplicate_mask(sig[:2], 0.85).tolist() == [False, False]
    assert _near_duplicate_mask(sig, 0.85).tolist() == [False, False, True]


def test_threshold_decides_what_is_near() -> None:
    base = long_text(5, 100)
    half = " ".join(base.split()[:50] + long_text(6, 50).split())  # true Jaccard ~0.32
    assert near_dedup([text(base), text(half)], threshold=0.85)[1] == 0
    assert near_dedup([text(base), text(half)], threshold=0.15)[1] == 1


def test_near_dedup_compares_with_kept_records_only() -> None:
    # b is close to a, c is close to b but not to a: b goes, and c stays because b was removed.
    a = long_text(7, 300).split()
    b = a[:280] + long_text(8, 20).split()
    c = b[:250] + long_text(9, 50).split()
    assert true_jaccard(" ".join(a), " ".join(c)) < 0.8
    kept, removed = near_dedup([text(" ".join(w), i) for i, w in enumerate((a, b, c))], threshold=0.85)
    assert [r.meta["line"] for r in kept] == [0, 2] and removed == 1


def test_near_dedup_is_deterministic_and_order_keeps_the_first() -> None:
    base = [long_text(i, 100) for i in range(20)]
    variants = []
    for i, t in enumerate(base[:10]):
        w = t.split()
        w[-1] = "tail"
        variants.append(text(" ".join(w), 100 + i))
    records = [text(t, i) for i, t in enumerate(base)] + variants
    first, n1 = near_dedup(records, seed=3)
    second, n2 = near_dedup(records, seed=3)
    assert n1 == n2 == 10
    assert [r.meta["line"] for r in first] == [r.meta["line"] for r in second] == list(range(20))
    reversed_kept, _ = near_dedup(records[::-1], seed=3)
    assert {r.meta["line"] for r in reversed_kept} == set(range(10, 20)) | set(range(100, 110))


def test_near_dedup_rejects_a_bad_threshold() -> None:
    with pytest.raises(TunelabError, match="threshold"):
        near_dedup([text("a"), text("b")], threshold=1.5)


# ------------------------------------------------------------------------------------------- leaks
def test_remove_leaks_finds_exact_and_near_copies_of_train_records() -> None:
    answers = [long_text(i, 80) for i in range(10)]
    train = [chat(f"question {i}", a, line=i + 1) for i, a in enumerate(answers)]
    near_copy = answers[4].split()
    near_copy[-2] = "different"
    other = [
        chat("fresh question", long_text(50, 80), line=1, file="eval.jsonl"),
        chat("QUESTION 2", answers[2] + "!", line=2, file="eval.jsonl"),  # exact after normalisation
        chat("question 4", " ".join(near_copy), line=3, file="eval.jsonl"),  # near
    ]
    kept, report = remove_leaks(train, other)
    assert [r.meta["line"] for r in kept] == [1]
    assert [(row["line"], row["train_line"], row["match"]) for row in report] == [
        (2, 3, "exact"),
        (3, 5, "near"),
    ]
    assert report[0]["file"] == "eval.jsonl" and report[0]["train_file"] == "train.jsonl"
    assert report[0]["jaccard"] == 1.0
    assert 0.85 <= report[1]["jaccard"] < 1.0
    assert report[1]["excerpt"].startswith("user: question 4")


def test_remove_leaks_with_nothing_to_compare() -> None:
    other = [text("alone")]
    assert remove_leaks([], other) == (other, [])
    assert remove_leaks([text("x")], []) == ([], [])
