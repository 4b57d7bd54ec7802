"""The ratings store, the choice of blind pairs and the preference export, on their own."""

from __future__ import annotations

import random

import pytest

from tunelab.errors import TunelabError
from tunelab.review import Rating, RatingStore, default_db_url, preference_rows
from tunelab.review.pairs import candidate_pairs, pick_pair


def _rating(choice: str, a: str = "short", b: str = "long answer", reviewer: str = "ana", qid: str = "0") -> Rating:
    return Rating("exp", qid, "Q?", "R", "v1", "v2", a, b, choice, reviewer)


def test_store_checks_what_it_keeps(tmp_path):
    store = RatingStore(default_db_url(tmp_path))
    with pytest.raises(TunelabError, match="choice"):
        store.add(_rating("maybe"))
    with pytest.raises(TunelabError, match="reviewer"):
        store.add(_rating("a", reviewer="   "))
    kept = store.add(_rating("a", reviewer="  ana   lee "))
    assert kept.reviewer == "ana lee" and kept.created_at
    assert [r.choice for r in RatingStore(default_db_url(tmp_path)).ratings("exp")] == ["a"]


def test_candidates_skip_identical_answers_and_rated_pairs():
    answers = {"v1": {"0": "x", "1": "y"}, "v2": {"0": "x", "1": "z"}, "v3": {"0": "w"}}
    assert candidate_pairs(answers, set()) == [("0", "v1", "v3"), ("0", "v2", "v3"), ("1", "v1", "v2")]
    assert candidate_pairs(answers, {("1", frozenset(("v2", "v1")))}) == [("0", "v1", "v3"), ("0", "v2", "v3")]
    orders = {pick_pair([("1", "v1", "v2")], random.Random(seed))[1:] for seed in range(20)}
    assert orders == {("v1", "v2"), ("v2", "v1")}  # shown either way round
    assert pick_pair([]) is None


def test_preferences_follow_the_majority_and_skip_ties():
    assert preference_rows([_rating("tie"), _rating("both_wrong")]) == []
    assert preference_rows([_rating("a"), _rating("b", reviewer="bo")]) == []  # split evenly
    # the same two answers shown the other way round still count as one pair
    votes = [_rating("b"), _rating("a", a="long answer", b="short", reviewer="bo"), _rating("a", reviewer="cy")]
    assert preference_rows(votes) == [{"prompt": "Q?", "chosen": "long answer", "rejected": "short"}]
    assert preference_rows([_rating("a", a="   ")]) == []  # an empty reply is no preference record


def test_one_pair_is_rated_once_per_reviewer_even_from_two_tabs(tmp_path):
    """Two pending tokens for one pair (two tabs), or a token used twice: the second rating is refused, so
    no verdict counts twice in the agreement figures or the preference majority."""
    from tunelab.review.store import AlreadyRated, PendingPair

    store = RatingStore(default_db_url(tmp_path))
    for token in ("tab1", "tab2"):
        store.put_pair(PendingPair(token, "exp", "0", "v1", "v2", "ana"))
    store.add(_rating("a"), token="tab1")
    with pytest.raises(AlreadyRated, match="already rated"):
        store.add(_rating("a"), token="tab1")  # the same token again
    with pytest.raises(AlreadyRated, match="ana already rated this pair"):
        # the other tab showed the pair the other way round
        store.add(Rating("exp", "0", "Q?", "R", "v2", "v1", "long answer", "short", "b", "ana"), token="tab2")
    store.add(_rating("tie", reviewer="bo"))  # another reviewer may rate it
    assert [(r.reviewer, r.choice) for r in store.ratings("exp")] == [("ana", "a"), ("bo", "tie")]
