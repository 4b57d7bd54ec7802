"""How far the LLM judge agrees with people: blind pairwise ratings against the judge's verdicts.

    from tunelab.evaluate.agreement import read_ratings, judge_ratings, agreement_report, pair_name

    ratings = read_ratings("ratings.jsonl")              # validated; errors name file, line and field
    judge = judge_ratings(ratings, backend)              # "a" | "b" | "tie" | None per rating
    report = agreement_report([r["choice"] for r in ratings], judge,
                              [pair_name(r["variant_a"], r["variant_b"]) for r in ratings])
    report["overall"]["kappa"], report["pairs"]["base vs tuned"]["agreement_ci"]

or all at once, as `tunelab eval --judge SPEC --agreement RATINGS` does: run_agreement(path, judge_config).

A ratings file has one JSON object per line (the browser review exports it): `experiment`, `question_id`,
`question`, `reference` (str or null), `variant_a`, `variant_b` (the variants shown as A and B),
`answer_a`, `answer_b`, `choice` ("a", "b", "tie" or "both_wrong"), `reviewer`, `note` (str or null) and
`created_at` (ISO 8601). Other fields are allowed and ignored.

The judge's choice: the judge scores answer A and answer B on its own (pointwise, the rubric of
`metric`, judge_accuracy by default), and picks the higher score; equal scores are a tie
(judge_choice). A failed score leaves the rating without a judge choice: it is left out of the
statistics and counted as `n_excluded`, never guessed.

Decisions, each because of what the two raters can say:
- "both_wrong" counts as "tie". The judge's pairwise verdict has no both-wrong class: two answers it
  scores alike are a tie whatever the level, and reading "both at the scale's floor" as both-wrong would
  give the judge a class only one rubric (1-5) has, while a person marks both-wrong for answers that are
  wrong in different ways. What both say alike is "neither is better", so both_wrong is a tie here; the
  count of both_wrong ratings is reported next to it (`n_both_wrong`).
- Orientation: a pair "X vs Y" and "Y vs X" are one pair, named with the two names in sorted order; a
  rating shown the other way round has "a" and "b" swapped, for the person and the judge alike (a tie
  stays a tie), so "a" always means the first-named variant. The overall figures use the same labels,
  so they do not depend on the random order the answers were shown in.
- Agreement rate: the share of ratings where both chose the same, with a 95% Wilson score interval
  (sound at small n and at 0% or 100%, where the normal interval collapses).
- Cohen's kappa over the labels a / b / tie (what sklearn.metrics.cohen_kappa_score computes), with a
  95% interval from its analytic large-sample standard error (Fleiss, Cohen & Everitt 1969, the one
  Fleiss' "Statistical Methods for Rates and Proportions" gives), kappa +- 1.96 SE clipped to [-1, 1]. Chosen
  over a bootstrap because it is deterministic and cheap; at perfect agreement the SE is 0, so the
  agreement rate's Wilson interval is the one to read at small n. Kappa is undefined (None, with
  `kappa_note`) when both raters put every rating in one and the same class (chance agreement is 1;
  sklearn returns nan there). A kappa whose SE is 0 (perfect agreement, or one rater used one class)
  gets a `kappa_note` saying its interval shows no uncertainty.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

from ..errors import InputError, Problem, TunelabError

HUMAN_CHOICES = ("a", "b", "tie", "both_wrong")
LABELS = ("a", "b", "tie")  # what is compared: a human's both_wrong is a tie (module docstring)
LEVEL = 0.95
RATING_METRICS = ("judge_accuracy", "judge_relevance")  # pointwise rubrics a rating can be judged on
OUTPUT_KIND = "agreement"

_TEXT_FIELDS = ("experiment", "question_id", "question", "variant_a", "variant_b", "reviewer")
_ANSWER_FIELDS = ("answer_a", "answer_b")  # may be empty: a model can answer nothing
_OPTIONAL_TEXT = ("reference", "note")
_FLIP = {"a": "b", "b": "a", "tie": "tie", "both_wrong": "both_wrong", None: None}


# -- the judge's choice --------------------------------------------------------------------------------


def judge_choice(score_a: float | None, score_b: float | None) -> str | None:
    """"a" when A scored higher, "b" when B did, "tie" when equal; None when a score is missing."""
    if score_a is None or score_b is None or math.isnan(score_a) or math.isnan(score_b):
        return None
    return "a" if score_a > score_b else "b" if score_b > score_a else "tie"


def pair_name(variant_a: str, variant_b: str) -> str:
    """The pair a rating compares, as agreement_report's `pairs` takes it: "A vs B"."""
    return f"{variant_a} vs {variant_b}"


# -- statistics ----------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion successes/n; None when n is 0."""
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def kappa_from_confusion(confusion: Sequence[Sequence[float]]) -> tuple[float | None, float | None]:
    """Cohen's kappa and its large-sample standard error (Fleiss, Cohen & Everitt 1969) from a square
    confusion matrix of counts (rows: one rater, columns: the other, same label order). (None, None)
    when it is undefined: no items, or chance agreement of 1 (both raters used one and the same class)."""
    k = len(confusion)
    n = float(sum(sum(row) for row in confusion))
    if n <= 0:
        return None, None
    p = [[confusion[i][j] / n for j in range(k)] for i in range(k)]
    rows = [sum(p[i]) for i in range(k)]
    cols = [sum(p[i][j] for i in range(k)) for j in range(k)]
    po = sum(p[i][i] for i in range(k))
    pe = sum(rows[i] * cols[i] for i in range(k))
    if pe >= 1 - 1e-12:
        return None, None
    kappa = (po - pe) / (1 - pe)
    diag = sum(p[i][i] * (1 - (rows[i] + cols[i]) * (1 - kappa)) ** 2 for i in range(k))
    off = (1 - kappa) ** 2 * sum(p[i][j] * (cols[i] + rows[j]) ** 2
                                 for i in range(k) for j in range(k) if i != j)
    var = (diag + off - (kappa - pe * (1 - kappa)) ** 2) / (n * (1 - pe) ** 2)
    return kappa, math.sqrt(max(var, 0.0))  # rounding can take an exact 0 a hair below


def _orient(pair: str) -> tuple[str, bool]:
    """The pair's name with its variants in sorted order, and whether a and b swap to get there."""
    parts = pair.split(" vs ")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise TunelabError(f"variant pair {pair!r} is not 'A vs B'")
    first, second = (p.strip() for p in parts)
    if second < first:
        return f"{second} vs {first}", True
    return f"{first} vs {second}", False


def _group(human: list[str], judge: list[str | None], level: float) -> dict[str, Any]:
    """The figures for one set of ratings (labels already oriented; human both_wrong not yet mapped)."""
    used = [(h, j) for h, j in zip(human, judge, strict=True) if j is not None]
    counts = Counter(("tie" if h == "both_wrong" else h, j) for h, j in used)
    confusion = [[counts[(h, j)] for j in LABELS] for h in LABELS]
    n = len(used)
    agree = sum(counts[(x, x)] for x in LABELS)
    kappa, se = kappa_from_confusion(confusion)
    out: dict[str, Any] = {
        "n": n,
        "n_excluded": len(human) - n,
        "n_both_wrong": sum(h == "both_wrong" for h in human),
        "agreement": agree / n if n else None,
        "agreement_ci": _pair(wilson_interval(agree, n, level)),
        "kappa": kappa,
        "kappa_se": se,
        "kappa_ci": None,
        "kappa_note": None,
        # rows: the people's choice, columns: the judge's
        "confusion": {h: {j: counts[(h, j)] for j in LABELS} for h in LABELS},
    }
    if kappa is not None and se is not None:
        z = NormalDist().inv_cdf(0.5 + level / 2)
        out["kappa_ci"] = [max(-1.0, kappa - z * se), min(1.0, kappa + z * se)]
        if se == 0:  # the large-sample SE knows no spread here; saying so beats a confident [k, k]
            out["kappa_note"] = ("its SE is 0 (perfect agreement, or one rater used a single class), so its "
                                 "interval shows no uncertainty: read the agreement interval")
    elif n == 0:
        out["kappa_note"] = "no rating with a judge choice"
    else:
        out["kappa_note"] = "undefined: people and judge put every rating in the same single class"
    return out


def _pair(interval: tuple[float, float] | None) -> list[float] | None:
    return list(interval) if interval is not None else None


def agreement_report(human: Sequence[str], judge: Sequence[str | None], pairs: Sequence[str],
                     level: float = LEVEL) -> dict[str, Any]:
    """Agreement of the people's choices with the judge's, overall and per variant pair.

    human[i] in a/b/tie/both_wrong, judge[i] in a/b/tie or None (no judge choice: left out, counted),
    pairs[i] "X vs Y" (the variants shown as A and B). Per group: n, n_excluded, n_both_wrong,
    agreement and agreement_ci (Wilson), kappa, kappa_se, kappa_ci (analytic SE), kappa_note, and the
    confusion counts; pairs are keyed by their oriented name (module docstring)."""
    if not len(human) == len(judge) == len(pairs):
        raise TunelabError(f"agreement: {len(human)} human choices, {len(judge)} judge choices and "
                           f"{len(pairs)} pairs; they must be as many")
    for what, values, allowed in (("human", human, HUMAN_CHOICES), ("judge", judge, (*LABELS, None))):
        bad = sorted({repr(v) for v in values if v not in allowed})
        if bad:
            raise TunelabError(f"agreement: {what} choice(s) {', '.join(bad)} not one of "
                               f"{', '.join(repr(a) for a in allowed)}")
    oriented_h: list[str] = []
    oriented_j: list[str | None] = []
    groups: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        name, flip = _orient(pair)
        oriented_h.append(_FLIP[human[i]] if flip else human[i])
        oriented_j.append(_FLIP[judge[i]] if flip else judge[i])
        groups.setdefault(name, []).append(i)
    return {
        "labels": list(LABELS),
        "level": level,
        "overall": _group(oriented_h, oriented_j, level),
        "pairs": {name: _group([oriented_h[i] for i in idx], [oriented_j[i] for i in idx], level)
                  for name, idx in sorted(groups.items())},
        "method": {
            "judge_choice": "the higher of the judge's two pointwise scores; equal scores are a tie",
            "both_wrong": "a person's both_wrong counts as tie (the judge has no both-wrong verdict)",
            "orientation": "a pair is named with its variants sorted; 'a' is the first-named variant",
            "agreement_ci": f"{level:.0%} Wilson score interval",
            "kappa": "Cohen's kappa over a/b/tie (as sklearn.metrics.cohen_kappa_score)",
            "kappa_ci": f"{level:.0%} normal interval from the analytic large-sample SE (Fleiss, Cohen & "
                        "Everitt 1969), clipped to [-1, 1]",
        },
    }


def agreement_from_ratings(ratings: Sequence[dict[str, Any]], judge: Sequence[str | None],
                           level: float = LEVEL) -> dict[str, Any]:
    """agreement_report over ratings (as read_ratings returns them) and the judge's choice for each."""
    return agreement_report([r["choice"] for r in ratings], judge,
                            [pair_name(r["variant_a"], r["variant_b"]) for r in ratings], level)


# -- the ratings file ----------------------------------------------------------------------------------


def read_ratings(path: str | Path) -> list[dict[str, Any]]:
    """The ratings in a JSONL file, every line checked; InputError listing each problem by file, line
    and field (nothing is returned unless every rating is valid)."""
    source = str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TunelabError(f"{source}: cannot read the ratings file ({exc})") from None
    ratings, problems = [], []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(source, line_no, None, f"not a JSON object ({exc.msg})"))
            continue
        if not isinstance(record, dict):
            problems.append(Problem(source, line_no, None, f"a rating is a JSON object, not {type(record).__name__}"))
            continue
        found = _rating_problems(record)
        problems += [Problem(source, line_no, field, message) for field, message in found]
        if not found:
            ratings.append(record)
    if problems:
        raise InputError(problems[:20], total=len(problems),
                         header=f"{len(problems)} problem(s) in the ratings file {source}; nothing was read:")
    if not ratings:
        raise TunelabError(f"{source}: no ratings in the file")
    return ratings


def _rating_problems(record: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for name in _TEXT_FIELDS:
        value = record.get(name)
        if not isinstance(value, str) or not value.strip():
            out.append((name, "missing" if value is None else f"must be a non-empty string, got {value!r:.60}"))
    for name in _ANSWER_FIELDS:
        if not isinstance(record.get(name), str):
            out.append((name, "missing" if record.get(name) is None else "must be a string"))
    for name in _OPTIONAL_TEXT:
        if record.get(name) is not None and not isinstance(record[name], str):
            out.append((name, "must be a string or null"))
    if record.get("choice") not in HUMAN_CHOICES:
        out.append(("choice", f"must be one of {', '.join(HUMAN_CHOICES)}, got {record.get('choice')!r:.60}"))
    created = record.get("created_at")
    try:
        datetime.fromisoformat(created)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        out.append(("created_at", f"must be an ISO 8601 time, got {created!r:.60}"))
    a, b = record.get("variant_a"), record.get("variant_b")
    if isinstance(a, str) and a.strip() and a == b:
        out.append(("variant_b", f"the same variant as variant_a ({a!r}); a rating compares two variants"))
    return out


# -- judging the rated answers -------------------------------------------------------------------------


def judge_scores(ratings: Sequence[dict[str, Any]], backend: Any, metric: str = "judge_accuracy",
                 retries: int = 2, on_progress: Callable[[str, int, int], None] | None = None,
                 ) -> tuple[list[tuple[float | None, float | None]], Any]:
    """The judge's (score A, score B) for every rating, and the evaluate.judge.JudgeResult. Each distinct
    (question, reference, answer) is judged once, counted by on_progress("judging", done, total). Raises
    TunelabError when the metric cannot judge a rating (judge_accuracy needs a reference) or when the
    judge scores no answer at all."""
    from .run import judge_rows

    if metric not in RATING_METRICS:
        raise TunelabError(f"agreement: cannot judge ratings on {metric!r}; use one of {', '.join(RATING_METRICS)} "
                           "(ratings carry no retrieved context, which judge_faithfulness needs)")
    if not ratings:
        raise TunelabError("agreement: no ratings to judge")
    if metric == "judge_accuracy":
        missing = [i for i, r in enumerate(ratings) if not (r.get("reference") or "").strip()]
        if missing:
            first = ratings[missing[0]]
            raise TunelabError(f"agreement: judge_accuracy grades answers against the reference, and "
                               f"{len(missing)} rating(s) have none (first: question {first.get('question_id')!r} "
                               f"of {first.get('experiment')!r}); judge on judge_relevance instead")
    keys: dict[tuple[str, str, str], int] = {}
    rows: list[dict[str, Any]] = []
    index: list[tuple[int, int]] = []
    for r in ratings:
        pair = []
        for answer in (r["answer_a"], r["answer_b"]):
            key = (r["question"], r.get("reference") or "", answer)
            if key not in keys:
                keys[key] = len(rows)
                rows.append({"index": len(rows), "question": r["question"], "prediction": answer,
                             "reference": r.get("reference")})
            pair.append(keys[key])
        index.append((pair[0], pair[1]))
    judged = judge_rows(rows, backend, with_context=False, retries=retries, what="agreement", metrics=[metric],
                        on_progress=on_progress)
    return [(rows[a][metric], rows[b][metric]) for a, b in index], judged


def judge_ratings(ratings: Sequence[dict[str, Any]], backend: Any, metric: str = "judge_accuracy",
                  retries: int = 2) -> list[str | None]:
    """The judge's choice for every rating: "a", "b", "tie", or None where it failed to score an answer."""
    scores, _ = judge_scores(ratings, backend, metric, retries)
    return [judge_choice(a, b) for a, b in scores]


def run_agreement(path: str | Path, judge: Any, *, metric: str = "judge_accuracy",
                  out: str | Path | None = None,
                  on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """`tunelab eval --judge SPEC --agreement RATINGS`: read the ratings, judge their answers with the
    judge a JudgeConfig describes, and report the agreement (agreement_report's dict plus the judge, its
    metric, prompt version and failures). With `out`, a directory written atomically: agreement.json
    and judged.jsonl (each rating with the judge's scores and choice). `on_progress` as judge_scores'."""
    from ..io import atomic_dir, check_output_dir, write_json, write_jsonl
    from .judge import judge_backend

    if out is not None:  # an output that may not be written is refused before the judge is called
        check_output_dir(out, OUTPUT_KIND, [path])
    ratings = read_ratings(path)
    backend = judge_backend(judge)
    scores, judged = judge_scores(ratings, backend, metric, judge.parse_retries, on_progress)
    choices = [judge_choice(a, b) for a, b in scores]
    report = {"ratings": str(path), "n_ratings": len(ratings), "judge": judged.judge, "metric": metric,
              "judge_metric": judged.metrics[metric], **agreement_from_ratings(ratings, choices)}
    if out is not None:
        with atomic_dir(out, kind=OUTPUT_KIND, inputs=[path]) as tmp:
            write_json(tmp / "agreement.json", report)
            write_jsonl(tmp / "judged.jsonl", ({**r, "judge_score_a": a, "judge_score_b": b, "judge_choice": c}
                                               for r, (a, b), c in zip(ratings, scores, choices, strict=True)))
    return report


def render_agreement(report: dict[str, Any]):
    """A rich Table: overall and per pair, n (and left out), agreement [CI], kappa [CI]."""
    from rich import box
    from rich.table import Table

    level = report.get("level", LEVEL)
    table = Table(title=f"Judge vs people: {report.get('judge', 'judge')} on {report.get('metric', '')}",
                  caption=f"agreement: share of ratings where both chose the same, {level:.0%} Wilson interval; "
                          f"kappa: Cohen's, {level:.0%} interval from its analytic SE; a person's both_wrong "
                          "counts as tie", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("pair", "left"), ("n", "right"), ("left out", "right"), ("agreement", "right"),
                          ("kappa", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    notes = []
    for name, g in [("overall", report["overall"]), *report["pairs"].items()]:
        agreement = "-" if g["agreement"] is None else f"{g['agreement']:.2f} {_bracket(g['agreement_ci'])}"
        kappa = "undefined" if g["kappa"] is None else f"{g['kappa']:.2f} {_bracket(g['kappa_ci'])}"
        table.add_row(name, str(g["n"]), str(g["n_excluded"]), agreement, kappa + ("*" if g["kappa_note"] else ""))
        if g["kappa_note"]:
            notes.append(f"* {name}: kappa {g['kappa_note']}")
    table.caption = "\n".join([table.caption or "", *notes])
    return table


def _bracket(interval: list[float] | None) -> str:
    return "" if interval is None else f"[{interval[0]:.2f}, {interval[1]:.2f}]"
