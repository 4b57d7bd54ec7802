"""Filters for generated records, in this order, each reporting what it dropped and why:

    length            question/instruction/text and every reply within character bounds
    self_containment  no question that needs its source to make sense ("this document", "the above"),
                      no reply that cites it ("according to the text")
    grounding         lexical, always: a reply's content words must occur in its source chunk (share
                      >= min_overlap), every number in it too, it must add a word or number of the
                      chunk beyond its question's (no "A badge is a badge"), and the question must be
                      about the chunk (share >= min_topic_overlap); a preference's rejected reply must
                      NOT be grounded
    dedup             exact (same normalised question), near (MinHash Jaccard of whole records, as
                      `data prepare` does, so what is kept here survives it) and similar: the questions
                      reach ROUGE-1 F >= similar_threshold (default 0.8; word order ignored, since "the
                      current position of the Facilities team" and "the Facilities team's current
                      position" ask one thing) AND the answers reach ROUGE-L F >= it. That is
                      Self-Instruct's ROUGE rule (ROUGE-L 0.7 on instructions alone there) extended to
                      answers, so that "part-time" and "full-time" versions of one question both stay,
                      and raised because facts in templated documents differ in a word or two. Against
                      the pool (an existing dataset) and every record kept before it in this run.
    judge             (when configured) an LLM checks each reply against the chunk; its failures to
                      answer are counted by reason, and such records are dropped, not kept unchecked

The cheap filters run first and dedup before the judge, so the judge is never paid for a duplicate.

Lexical terms: casefolded Unicode words, Porter-stemmed (ASCII words of 4+ letters, as rouge-score
stems), English stop words left out. Numbers are compared as written, thousands separators and
leading zero removed ("1,500" = "1500", "09:00" = "9:00"). ROUGE here runs over the same terms with
numbers kept (Unicode words, unlike rouge-score's [a-z0-9] tokens, and without stop words, which
would make every "How many ... do ... get?" question look alike); ROUGE-1 F is 2 * |A and B| (as
multisets) / (|A| + |B|), ROUGE-L F is 2 * LCS / (|A| + |B|).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import SynthFilterConfig
from ..data.dedup import near_dedup, normalise_for_exact, remove_leaks
from ..data.records import Record
from .generate import Candidate

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each either else ever few for from further
get gets got had has have having he her here hers him his how i if in into is it its itself just let
may me might more most much must my no nor not now of off on once only or other our ours out over
own per same shall she should so some such than that the their theirs them then there these they this
those through to too under until up upon us very was we were what when where whether which while who
whom whose why will with within would yes yet you your yours
s t d ll m re ve
""".split())  # the last line: what is left of "team's", "don't", "we'll" ... once split into words

# A question that points at a text its reader will not have, or a reply that cites one.
_CITES_SOURCE = re.compile(
    r"\b(?:"
    r"(?:this|the\s+above|the\s+following|the\s+given|the\s+provided|the\s+preceding|the\s+attached|"
    r"above|following|given|provided)\s+(?:document|text|passage|excerpt|section|paragraph|chunk|article|"
    r"context|snippet|extract|information|material|content)\b"
    r"|the\s+(?:text|passage|excerpt|chunk|snippet)\b(?!\s+(?:message|messages|box|field|editor))"
    r"|the\s+above"
    r"|(?:according\s+to|based\s+on|as\s+(?:stated|mentioned|described|noted)\s+in)\s+the\s+"
    r"(?:document|text|passage|excerpt|section|paragraph|article|context|source|information)"
    r"|as\s+(?:stated|mentioned|described|noted)\s+(?:above|earlier|before)"
    r"|mentioned\s+above"
    r")",
    re.IGNORECASE,
)


# -- lexical terms -------------------------------------------------------------------------------------


@functools.cache
def _stemmer() -> Any:
    from nltk.stem.porter import PorterStemmer  # what rouge-score stems with

    return PorterStemmer("ORIGINAL_ALGORITHM")


@functools.lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return _stemmer().stem(word) if len(word) > 3 and word.isascii() and word.isalpha() else word


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def content_terms(text: str) -> set[str]:
    return {_stem(w) for w in words(text) if w not in STOP_WORDS and not w.isdigit()}


def _norm_number(raw: str) -> str:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", raw):
        raw = raw.replace(",", "")
    return re.sub(r"^0+(?=\d)", "", raw)


def numbers(text: str) -> set[str]:
    return {_norm_number(m.group()) for m in _NUMBER.finditer(text)}


@dataclass(frozen=True)
class Support:
    overlap: float | None  # None: no content words to check
    missing_terms: tuple[str, ...]
    missing_numbers: tuple[str, ...]


def support(text: str, source_terms: set[str], source_numbers: set[str]) -> Support:
    terms = content_terms(text)
    missing = tuple(sorted(terms - source_terms))
    overlap = (1 - len(missing) / len(terms)) if terms else None
    return Support(overlap, missing, tuple(sorted(numbers(text) - source_numbers)))


# -- the report ----------------------------------------------------------------------------------------


@dataclass
class Dropped:
    candidate: Candidate
    filter: str
    reason: str
    detail: str

    def to_row(self) -> dict[str, Any]:
        return {"filter": self.filter, "reason": self.reason, "detail": self.detail, **self.candidate.to_row()}


@dataclass
class FilterReport:
    """Per filter, in order: records in, dropped (by reason); and every dropped record."""

    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: list[Dropped] = field(default_factory=list)
    judge_calls: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, n_in: int, dropped: list[Dropped]) -> None:
        reasons = Counter(d.reason for d in dropped)
        step = self.steps.setdefault(name, {"in": 0, "dropped": 0, "reasons": {}})
        step["in"] += n_in
        step["dropped"] += len(dropped)
        for reason, n in reasons.items():
            step["reasons"][reason] = step["reasons"].get(reason, 0) + n
        self.dropped.extend(dropped)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps}
        if self.judge_calls:
            out["judge_calls"] = self.judge_calls
        return out


# -- the cheap filters ---------------------------------------------------------------------------------


def length_filter(cands: Sequence[Candidate], cfg: SynthFilterConfig) -> tuple[list[Candidate], list[Dropped]]:
    kept, dropped = [], []
    for c in cands:
        problem = None
        for q in c.questions:
            if len(q.strip()) < cfg.min_prompt_chars:
                problem = ("prompt_too_short", f"{len(q.strip())} < {cfg.min_prompt_chars} chars: {q[:80]!r}")
            elif len(q.strip()) > cfg.max_prompt_chars:
                problem = ("prompt_too_long", f"{len(q.strip())} > {cfg.max_prompt_chars} chars")
            if problem:
                break
        if problem is None:
            for a in [*c.answers, *([c.rejected] if c.rejected is not None else [])]:
                if len(a.strip()) < cfg.min_answer_chars:
                    problem = ("answer_too_short", f"{len(a.strip())} < {cfg.min_answer_chars} chars: {a!r}")
                elif len(a.strip()) > cfg.max_answer_chars:
                    problem = ("answer_too_long", f"{len(a.strip())} > {cfg.max_answer_chars} chars")
                if problem:
                    break
        if problem:
            dropped.append(Dropped(c, "length", *problem))
        else:
            kept.append(c)
    return kept, dropped


def cites_source(text: str) -> str | None:
    """The phrase by which `text` points at a source its reader will not see, or None."""
    m = _CITES_SOURCE.search(text)
    return " ".join(m.group().split()) if m else None


def self_containment_filter(cands: Sequence[Candidate]) -> tuple[list[Candidate], list[Dropped]]:
    kept, dropped = [], []
    for c in cands:
        hit = next(((q, p) for q in c.questions if (p := cites_source(q))), None)
        if hit:
            dropped.append(Dropped(c, "self_containment", "question_cites_source", f"{hit[1]!r} in {hit[0][:100]!r}"))
            continue
        hit = next(((a, p) for a in c.answers if (p := cites_source(a))), None)
        if hit:
            dropped.append(Dropped(c, "self_containment", "answer_cites_source", f"{hit[1]!r} in {hit[0][:100]!r}"))
            continue
        kept.append(c)
    return kept, dropped


def grounding_filter(cands: Sequence[Candidate], cfg: SynthFilterConfig) -> tuple[list[Candidate], list[Dropped]]:
    """The lexical grounding check; the overlaps it measured go into each kept record's meta."""
    kept, dropped = [], []
    for c in cands:
        source = c.source_text()
        terms, nums = content_terms(source), numbers(source)
        problem = _grounding_problem(c, terms, nums, cfg)
        if problem:
            dropped.append(Dropped(c, "grounding", *problem))
        else:
            kept.append(c)
    return kept, dropped


def _grounding_problem(c: Candidate, terms: set[str], nums: set[str], cfg: SynthFilterConfig) -> tuple[str, str] | None:
    topic = support(c.questions[0], terms, nums)
    c.checks["topic_overlap"] = None if topic.overlap is None else round(topic.overlap, 3)
    if topic.overlap is not None and topic.overlap < cfg.min_topic_overlap:
        return "off_topic", (f"{topic.overlap:.2f} of the question's content words are in the chunk "
                             f"(< {cfg.min_topic_overlap}); not in it: {', '.join(topic.missing_terms[:8])}")
    overlaps = []
    for k, answer in enumerate(c.answers):
        s = support(answer, terms, nums)
        if s.overlap is None:
            return "no_content_words", f"nothing to check against the chunk in {answer[:80]!r}"
        if cfg.check_numbers and s.missing_numbers:
            return "unsupported_number", f"{', '.join(s.missing_numbers)} not in the chunk: {answer[:100]!r}"
        if s.overlap < cfg.min_overlap:
            return "low_overlap", (f"{s.overlap:.2f} of the reply's content words are in the chunk "
                                   f"(< {cfg.min_overlap}); not in it: {', '.join(s.missing_terms[:8])}")
        # A reply made only of its question's words ("A badge is a badge") passes the overlap test
        # without telling anything: it must bring at least one word or number of the chunk.
        question = c.questions[min(k, len(c.questions) - 1)]
        asked = content_terms(question) | numbers(question)
        if not ((content_terms(answer) | numbers(answer)) & (terms | nums)) - asked:
            return "answer_adds_nothing", f"no word or number of the chunk beyond the question's: {answer[:100]!r}"
        overlaps.append(s.overlap)
    if overlaps:
        c.checks["overlap"] = round(min(overlaps), 3)
    if c.rejected is not None:
        if normalise_for_exact(c.rejected) == normalise_for_exact(c.answers[0]):
            return "rejected_same_as_chosen", c.rejected[:100]
        r = support(c.rejected, terms, nums)
        if r.overlap is not None and r.overlap < cfg.min_topic_overlap:
            return "rejected_off_topic", f"{r.overlap:.2f} of its content words are in the chunk: {c.rejected[:100]!r}"
        # A rejected reply is only useful when it is wrong: it must say something the chunk does not.
        # Lexically that is a number or a content word the chunk (and the question) lacks; a wrong
        # reply made of the chunk's own words (a swapped condition) cannot be told apart here.
        question_terms = content_terms(c.questions[0])
        novel = [t for t in r.missing_terms if t not in question_terms]
        if not r.missing_numbers and not novel:
            return "rejected_looks_grounded", f"every word and number of it is in the chunk: {c.rejected[:100]!r}"
        c.checks["rejected_unsupported"] = list(r.missing_numbers) + novel[:5]
    return None


# -- dedup ---------------------------------------------------------------------------------------------


def prompt_text(record: Record) -> str:
    """What a pool record asks: its user turns, or its text."""
    if record.messages:
        users = [m["content"] for m in record.messages if m["role"] == "user"]
        if users:
            return "\n".join(users)
    return record.text or ""


def answer_text(record: Record) -> str:
    """What a pool record answers: its assistant turns, or its chosen reply ('' for a labelled text)."""
    if record.messages and record.kind == "chat":
        return "\n".join(m["content"] for m in record.messages if m["role"] == "assistant")
    return record.chosen or ""


def similarity_terms(text: str) -> list[str]:
    """The sequence ROUGE-L compares: stemmed words without stop words, numbers kept (they tell
    "claim 20 vouchers" from "claim 21 vouchers")."""
    return [_stem(w) for w in words(text) if w not in STOP_WORDS]


def rouge_1_f(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    return 2 * sum((Counter(a) & Counter(b)).values()) / (len(a) + len(b))


def rouge_l_f(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return 2 * prev[-1] / (len(a) + len(b))


def _similar_candidates(new: list[list[str]], old: list[list[str]], threshold: float,
                        block: int = 512) -> list[list[int]]:
    """For each new token list, the indices (into old + new) of earlier lists whose ROUGE-1 F with it
    (2*|A∩B|/(|A|+|B|), multisets) reaches the threshold, best first. The intersections come from one
    sparse product over (word, occurrence number) features, so no pair is compared in Python."""
    from scipy.sparse import csr_matrix

    docs = old + new
    vocab: dict[tuple[str, int], int] = {}
    indptr, indices = [0], []
    for toks in docs:
        seen: Counter[str] = Counter()
        for t in toks:
            indices.append(vocab.setdefault((t, seen[t]), len(vocab)))
            seen[t] += 1
        indptr.append(len(indices))
    lengths = np.diff(np.array(indptr))
    mat = csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(docs), max(1, len(vocab))))
    out: list[list[int]] = [[] for _ in new]
    n_old = len(old)
    for b0 in range(0, len(new), block):
        rows = mat[n_old + b0 : n_old + min(len(new), b0 + block)]
        inter = (rows @ mat.T).tocoo()
        i, j, v = inter.row, inter.col, inter.data
        bound = 2 * v / np.maximum(lengths[n_old + b0 + i] + lengths[j], 1)
        ok = (bound >= threshold) & (j < n_old + b0 + i)  # only earlier lists: pool, then this run's
        order = np.argsort(-bound[ok], kind="stable")
        for ii, jj in zip(i[ok][order].tolist(), j[ok][order].tolist(), strict=True):
            out[b0 + ii].append(jj)
    return out


def dedup_filter(cands: Sequence[Candidate], pool: Sequence[Record], cfg: SynthFilterConfig,
                 seed: int = 0) -> tuple[list[Candidate], list[Dropped]]:
    """Exact, near and similar duplicates against the pool and earlier candidates; first one kept."""
    dropped: list[Dropped] = []
    # exact: the same question (normalised), whatever the answers
    seen = {normalise_for_exact(prompt_text(r)): "the pool" for r in pool}
    exact_kept = []
    for c in cands:
        key = normalise_for_exact(c.prompt_text)
        if key in seen:
            dropped.append(Dropped(c, "dedup", "duplicate", f"same question as {seen[key]}: {c.prompt_text[:100]!r}"))
        else:
            seen[key] = f"a record from chunk {c.chunk.id}"
            exact_kept.append(c)
    # near: whole records, MinHash as data prepare does it
    records = [c.record for c in exact_kept]
    if pool and records:
        remaining, leaks = remove_leaks(pool, records, threshold=cfg.near_threshold, seed=seed)
        by_id = {id(c.record): c for c in exact_kept}
        for rec, leak in zip([r for r in records if not any(r is k for k in remaining)], leaks, strict=True):
            dropped.append(Dropped(by_id[id(rec)], "dedup", "near_duplicate",
                                   f"Jaccard {leak['jaccard']} with pool record {leak['train_file']}:{leak['train_line']}"))
        records = remaining
    kept_recs, _ = near_dedup(records, threshold=cfg.near_threshold, seed=seed)
    kept_ids = {id(r) for r in kept_recs}
    near_kept = []
    for c in exact_kept:
        if id(c.record) in kept_ids:
            near_kept.append(c)
        elif not any(d.candidate is c for d in dropped):
            dropped.append(Dropped(c, "dedup", "near_duplicate",
                                   f"Jaccard >= {cfg.near_threshold} with an earlier record of this run"))
    # similar: ROUGE-1 between questions AND ROUGE-L between answers, against the pool and the records
    # kept so far. Questions alone would not do: "How many days of leave do part-time staff get?" and
    # the same for full-time staff differ in one word and ask for different facts; their answers differ.
    old = [(similarity_terms(prompt_text(r)), similarity_terms(answer_text(r))) for r in pool]
    new = [(similarity_terms(c.prompt_text), similarity_terms("\n".join(c.answers))) for c in near_kept]
    candidates = _similar_candidates([q for q, _ in new], [q for q, _ in old], cfg.similar_threshold)
    alive = [True] * len(new)
    kept = []
    for i, c in enumerate(near_kept):
        for j in candidates[i]:
            if j >= len(old) and not alive[j - len(old)]:
                continue
            other = old[j] if j < len(old) else new[j - len(old)]
            q_score = rouge_1_f(new[i][0], other[0])
            a_score = rouge_l_f(new[i][1], other[1]) if new[i][1] or other[1] else 1.0
            if q_score >= cfg.similar_threshold and a_score >= cfg.similar_threshold:
                where = "a pool record" if j < len(old) else f"a record from chunk {near_kept[j - len(old)].chunk.id}"
                dropped.append(Dropped(c, "dedup", "similar", f"ROUGE-1 {q_score:.2f} (question), ROUGE-L "
                                       f"{a_score:.2f} (answer) with {where}: {' '.join(other[0])[:100]!r}"))
                alive[i] = False
                break
        if alive[i]:
            kept.append(c)
    return kept, dropped


def apply_cheap_filters(cands: Sequence[Candidate], cfg: SynthFilterConfig, pool: Sequence[Record],
                        report: FilterReport, seed: int = 0) -> list[Candidate]:
    """length -> self_containment -> grounding -> dedup, each recorded in `report`."""
    current = list(cands)
    for name, step in (
        ("length", lambda cs: length_filter(cs, cfg)),
        ("self_containment", self_containment_filter),
        ("grounding", lambda cs: grounding_filter(cs, cfg)),
        ("dedup", lambda cs: dedup_filter(cs, pool, cfg, seed)),
    ):
        kept, dropped = step(current)
        report.add(name, len(current), dropped)
        current = kept
    return current
