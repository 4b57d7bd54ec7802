"""Judge-vs-people agreement: kappa equals scikit-learn's, the intervals, pair orientation, the ratings
file's checks, judging rated answers against a loopback judge."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import openai_server
import pytest
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score

from tunelab.errors import InputError, TunelabError
from tunelab.evaluate.agreement import (
    agreement_from_ratings,
    agreement_report,
    judge_choice,
    judge_ratings,
    kappa_from_confusion,
    read_ratings,
    wilson_interval,
)
from tunelab.llm import OpenAIBackend


@pytest.fixture
def server():
    srv = openai_server.OpenAIServer().start()
    yield srv
    srv.stop()


def graded(scores: dict[str, int]):
    """A judge replying with scores[answer] for the answer in its prompt; an unknown answer gets a reply
    that is not JSON (so that answer cannot be scored)."""

    def respond(body):
        prompt = body["messages"][-1]["content"]
        answer = re.search(r"ANSWER:\n(.*?)\n\nReply", prompt, re.DOTALL).group(1).strip()
        if answer not in scores:
            return "I would rather not say."
        return json.dumps({"reason": "graded", "score": scores[answer]})

    return respond


def rating(i: int, a: str, b: str, choice: str, *, va: str = "base", vb: str = "tuned", **extra) -> dict:
    return {"experiment": "exp", "question_id": f"q{i}", "question": f"Question {i}?", "reference": "The answer.",
            "variant_a": va, "variant_b": vb, "answer_a": a, "answer_b": b, "choice": choice, "reviewer": "ann",
            "note": None, "created_at": "2026-01-02T03:04:05+00:00", **extra}


def write_ratings(path, ratings) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in ratings))
    return str(path)


def _sk(human, judge):
    return cohen_kappa_score(["tie" if h == "both_wrong" else h for h in human], judge)


RNG = np.random.default_rng(7)
LABEL_SETS = {
    "perfect": (["a", "b", "tie", "a", "b"] * 4, ["a", "b", "tie", "a", "b"] * 4),
    "opposite": (["a", "b"] * 6, ["b", "a"] * 6),
    "independent": (list(RNG.choice(["a", "b", "tie"], 60)), list(RNG.choice(["a", "b", "tie"], 60))),
    "mostly_agree": (["a"] * 10 + ["b"] * 7 + ["tie"] * 3 + ["a", "b", "tie"],
                     ["a"] * 9 + ["b"] + ["b"] * 6 + ["tie"] + ["tie"] * 3 + ["b", "a", "a"]),
    "both_wrong_is_tie": (["both_wrong", "tie", "a", "b", "both_wrong", "a"], ["tie", "tie", "a", "a", "b", "a"]),
    "one_rater_one_class": (["a"] * 8, ["a", "b", "tie", "a", "a", "b", "a", "tie"]),
    "two_classes": (["a", "b", "b", "a", "a", "b", "a"], ["a", "b", "a", "a", "b", "b", "a"]),
}


@pytest.mark.parametrize("name", sorted(LABEL_SETS))
def test_kappa_equals_sklearn_and_its_interval_brackets_it(name):
    human, judge = LABEL_SETS[name]
    report = agreement_report(human, judge, ["base vs tuned"] * len(human))
    overall = report["overall"]
    assert overall["kappa"] == pytest.approx(_sk(human, judge), abs=1e-12)
    assert overall["n"] == len(human) and overall["n_excluded"] == 0
    mapped = ["tie" if h == "both_wrong" else h for h in human]
    assert overall["agreement"] == pytest.approx(np.mean([h == j for h, j in zip(mapped, judge, strict=True)]))
    low, high = overall["kappa_ci"]
    assert -1 <= low <= overall["kappa"] <= high <= 1
    low, high = overall["agreement_ci"]
    assert 0 <= low <= overall["agreement"] <= high <= 1
    assert report["pairs"]["base vs tuned"]["kappa"] == overall["kappa"]
    if name == "perfect":  # the analytic SE is 0 there, and the report says so
        assert overall["kappa_ci"] == [1.0, 1.0] and "SE is 0" in overall["kappa_note"]


def test_kappa_is_undefined_when_both_use_one_single_class():
    human, judge = ["a"] * 5, ["a"] * 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that it is undefined and returns nan
        assert math.isnan(cohen_kappa_score(human, judge))
    overall = agreement_report(human, judge, ["x vs y"] * 5)["overall"]
    assert overall["kappa"] is None and overall["kappa_ci"] is None and overall["kappa_se"] is None
    assert "same single class" in overall["kappa_note"]
    assert overall["agreement"] == 1.0 and overall["agreement_ci"][1] == pytest.approx(1.0)
    assert overall["agreement_ci"][0] < 0.6  # five ratings cannot make the agreement sure
    nothing = agreement_report(["a", "b"], [None, None], ["x vs y"] * 2)["overall"]
    assert (nothing["n"], nothing["n_excluded"], nothing["agreement"], nothing["kappa"]) == (0, 2, None, None)
    assert nothing["kappa_note"] == "no rating with a judge choice"


def test_wilson_interval_matches_scipy():
    for k, n in [(8, 10), (0, 7), (7, 7), (33, 50), (1, 1)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 0) is None


def test_the_kappa_standard_error_matches_the_spread_of_kappa_over_samples():
    # a population with kappa about 0.5; the analytic SE must describe how kappa varies from sample to
    # sample of 120 ratings, and its 95% interval must cover the population kappa about 95% of the time
    p = np.array([[0.30, 0.05, 0.05], [0.04, 0.25, 0.06], [0.05, 0.05, 0.15]])
    true_kappa, _ = kappa_from_confusion(p * 1e6)
    rng = np.random.default_rng(0)
    kappas, covered = [], 0
    for counts in rng.multinomial(120, p.ravel(), size=2000):
        kappa, se = kappa_from_confusion(counts.reshape(3, 3).tolist())
        kappas.append(kappa)
        covered += kappa - 1.96 * se <= true_kappa <= kappa + 1.96 * se
    _, se_pop = kappa_from_confusion((p * 120).tolist())
    assert se_pop == pytest.approx(np.std(kappas), rel=0.08)
    assert 0.93 <= covered / 2000 <= 0.97


def test_a_pair_shown_either_way_round_is_one_pair_with_its_choices_flipped():
    human = ["a", "b", "tie", "a", "b", "both_wrong"]
    judge = ["a", "a", "tie", "b", "b", "tie"]
    pairs = ["tuned vs base", "tuned vs base", "tuned vs base", "base vs tuned", "base vs tuned", "rag vs base"]
    report = agreement_report(human, judge, pairs)
    assert sorted(report["pairs"]) == ["base vs rag", "base vs tuned"]
    g = report["pairs"]["base vs tuned"]
    # the first three, shown as tuned (A) vs base (B), read as base vs tuned: a and b swap, a tie stays
    same = agreement_report(["b", "a", "tie", "a", "b"], ["b", "b", "tie", "b", "b"], ["base vs tuned"] * 5)
    assert g == same["overall"] == same["pairs"]["base vs tuned"]
    assert g["confusion"]["b"] == g["confusion"]["a"] == {"a": 0, "b": 2, "tie": 0}
    assert report["pairs"]["base vs rag"]["n_both_wrong"] == 1 and report["overall"]["n_both_wrong"] == 1
    # the overall figures do not depend on the random order the answers were shown in
    flipped = [{"a": "b", "b": "a"}.get(x, x) for x in human]
    flipped_j = [{"a": "b", "b": "a"}.get(x, x) for x in judge]
    swapped = [" vs ".join(reversed(p.split(" vs "))) for p in pairs]
    assert agreement_report(flipped, flipped_j, swapped) == report


def test_rows_without_a_judge_choice_are_left_out_and_counted():
    report = agreement_report(["a", "b", "a", "tie"], ["a", None, "b", None], ["x vs y"] * 4)["overall"]
    assert (report["n"], report["n_excluded"], report["agreement"]) == (2, 2, 0.5)
    assert report["kappa"] == pytest.approx(cohen_kappa_score(["a", "a"], ["a", "b"]))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TunelabError, match="must be as many"):
        agreement_report(["a"], ["a", "b"], ["x vs y"])
    with pytest.raises(TunelabError, match="human choice.*'better'"):
        agreement_report(["better"], ["a"], ["x vs y"])
    with pytest.raises(TunelabError, match="judge choice.*'both_wrong'"):
        agreement_report(["a"], ["both_wrong"], ["x vs y"])
    with pytest.raises(TunelabError, match="'x and y' is not 'A vs B'"):
        agreement_report(["a"], ["a"], ["x and y"])


def test_judge_choice():
    assert [judge_choice(5, 3), judge_choice(2, 4.0), judge_choice(3, 3), judge_choice(None, 2),
            judge_choice(4, None), judge_choice(float("nan"), 1)] == ["a", "b", "tie", None, None, None]


def test_read_ratings_checks_every_line_and_names_file_line_and_field(tmp_path):
    good = [rating(0, "x", "y", "a"), {**rating(1, "x", "y", "both_wrong"), "reference": None, "extra": 1}]
    path = write_ratings(tmp_path / "ok.jsonl", good)
    assert read_ratings(path) == good

    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps(rating(0, "x", "y", "a")),
        "{not json",
        json.dumps(rating(2, "x", "y", "better")),
        "",
        json.dumps({k: v for k, v in rating(4, "x", "y", "a").items() if k != "reviewer"}),
        json.dumps(rating(5, "x", "y", "a", created_at="yesterday", reference=3)),
        json.dumps(rating(6, "x", None, "tie", vb="base")),
        "[1, 2]",
    ]) + "\n")
    with pytest.raises(InputError) as info:
        read_ratings(bad)
    text = str(info.value)
    for where in (f"{bad}:2: not a JSON object", f"{bad}:3: field 'choice': must be one of a, b, tie, both_wrong",
                  f"{bad}:5: field 'reviewer': missing", f"{bad}:6: field 'created_at': must be an ISO 8601",
                  f"{bad}:6: field 'reference': must be a string or null", f"{bad}:7: field 'answer_b': missing",
                  f"{bad}:7: field 'variant_b': the same variant", f"{bad}:8: a rating is a JSON object, not list"):
        assert where in text, (where, text)
    assert ":1:" not in text and "nothing was read" in text

    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TunelabError, match="no ratings in the file"):
        read_ratings(tmp_path / "empty.jsonl")
    with pytest.raises(TunelabError, match="missing.jsonl: cannot read the ratings file"):
        read_ratings(tmp_path / "missing.jsonl")


def test_judge_ratings_scores_both_answers_and_picks_the_higher(server):
    server.responder = graded({"Paris.": 5, "Lyon.": 1, "Paris, maybe.": 4})
    ratings = [rating(0, "Paris.", "Lyon.", "a"), rating(1, "Lyon.", "Paris, maybe.", "b"),
               rating(2, "Paris.", "Paris.", "tie", question="Question 0?"), rating(3, "Paris.", "Mars.", "a")]
    choices = judge_ratings(ratings, OpenAIBackend("judge", server.base_url, concurrency=2), retries=0)
    assert choices == ["a", "b", "tie", None]  # "Mars." cannot be scored: no choice, never a guess
    # each distinct (question, reference, answer) is judged once: q0 Paris/Lyon, q1 Lyon/maybe, q3 Paris/Mars
    assert len(server.requests) == 6
    report = agreement_from_ratings(ratings, choices)
    assert (report["overall"]["n"], report["overall"]["n_excluded"], report["overall"]["agreement"]) == (3, 1, 1.0)

    with pytest.raises(TunelabError, match="1 rating\\(s\\) have none.*'q1'.*judge_relevance"):
        judge_ratings([ratings[0], {**ratings[1], "reference": None}], OpenAIBackend("judge", server.base_url))
    with pytest.raises(TunelabError, match="cannot judge ratings on 'judge_faithfulness'"):
        judge_ratings(ratings, OpenAIBackend("judge", server.base_url), metric="judge_faithfulness")
    server.responder = lambda body: openai_server.Reply(status=500)
    with pytest.raises(TunelabError, match="could not score a single row"):
        judge_ratings(ratings, OpenAIBackend("judge", server.base_url, max_retries=0), retries=0)
