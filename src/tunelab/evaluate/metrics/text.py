"""Text-similarity metrics, each defined exactly as the library users trust computes it.

- bleu, chrf: sacrebleu corpus_bleu / corpus_chrf with default settings, one reference stream
  (`corpus_bleu(hyps, [refs])`), 0-100 scale, corpus-level; the sacrebleu signature is reported.
  The bootstrap interval resamples sacrebleu's own per-sentence sufficient statistics, the way
  sacrebleu's paired bootstrap does, so 1000 resamples take milliseconds.
- rouge1/2/L/Lsum: rouge-score (Google's ROUGE-1.5.5 port), F-measure, mean over examples,
  use_stemmer=True by default (stated in the output); rougeLsum splits sentences on newlines.
  rouge-score's tokenizer keeps only [a-z0-9], so text in other scripts would score 0: the
  "unicode" tokenizer keeps letters of every script (CJK/Thai characters one token each).
- ngram_jaccard: word 1-2-gram Jaccard similarity (|A ∩ B| / |A ∪ B| over the sets of word unigrams
  and bigrams, lowercased Unicode words), mean over examples.
- exact_match, token_f1: SQuAD v1.1 normalisation (lowercase, drop punctuation, drop the articles
  a/an/the, collapse whitespace), mean over examples, 0-1 scale.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from importlib.metadata import version

import numpy as np

from ...errors import TunelabError
from .base import MetricInputs, Score, bootstrap_ci

# -- sacrebleu ------------------------------------------------------------------------------------


def _sacrebleu_corpus(inputs: MetricInputs, metric_cls: type) -> Score:
    metric = metric_cls()
    refs = [inputs.references]
    result = metric.corpus_score(inputs.predictions, refs)
    signature = metric.get_signature().format()
    # Per-sentence sufficient statistics; summing any subset and scoring it is corpus BLEU/chrF of
    # that subset (sacrebleu's own bootstrap does the same, through these private methods).
    stats = np.asarray(metric._extract_corpus_statistics(inputs.predictions, refs), dtype=np.float64)

    def statistic(idx: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(list(stats[idx].sum(axis=0))).score)

    ci = bootstrap_ci(inputs.n, statistic, inputs.bootstrap_samples, inputs.seed)
    return Score(value=float(result.score), ci=ci, details={"signature": signature, "scale": "0-100"})


def bleu(inputs: MetricInputs) -> Score:
    from sacrebleu.metrics import BLEU

    return _sacrebleu_corpus(inputs, BLEU)


def chrf(inputs: MetricInputs) -> Score:
    from sacrebleu.metrics import CHRF

    return _sacrebleu_corpus(inputs, CHRF)


# -- ROUGE ----------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Scripts written without spaces between words: each character is one token.
_NO_SPACE_SCRIPTS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"
_UNICODE_TOKEN = re.compile(rf"[{_NO_SPACE_SCRIPTS}]|(?:(?![{_NO_SPACE_SCRIPTS}])[^\W_])+")
_ASCII_TOKEN = re.compile(r"^[a-z0-9]+$")
_LETTER = re.compile(r"[^\W\d_]")


class UnicodeTokenizer:
    """A rouge-score tokenizer for any script: lowercased runs of letters/digits of every script,
    with CJK, Thai, Lao, Myanmar and Khmer characters one token each. ASCII words longer than three
    characters are Porter-stemmed when asked, as rouge-score's own tokenizer does."""

    def __init__(self, use_stemmer: bool = True):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = _UNICODE_TOKEN.findall(text.lower())
        if self._stemmer is None:
            return tokens
        return [self._stemmer.stem(t) if len(t) > 3 and _ASCII_TOKEN.match(t) else t for t in tokens]


def choose_rouge_tokenizer(setting: str, texts: list[str]) -> str:
    """"auto" picks "unicode" when more than a fifth of the letters in the references are outside
    a-z (rouge-score's tokenizer would drop them), otherwise rouge-score's default."""
    if setting in ("default", "unicode"):
        return setting
    if setting != "auto":
        raise TunelabError(f"unknown ROUGE tokenizer '{setting}'; use default, unicode or auto")
    letters = [c for t in texts for c in _LETTER.findall(t)]
    if not letters:
        return "default"
    non_ascii = sum(1 for c in letters if not ("a" <= c.lower() <= "z"))
    return "unicode" if non_ascii / len(letters) > 0.2 else "default"


def _rouge_all(inputs: MetricInputs) -> dict[str, object]:
    if "rouge" in inputs.cache:
        return inputs.cache["rouge"]
    from rouge_score import rouge_scorer

    tok_name = choose_rouge_tokenizer(inputs.rouge_tokenizer, inputs.references)
    tokenizer = UnicodeTokenizer(inputs.rouge_stemmer) if tok_name == "unicode" else None
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=inputs.rouge_stemmer, tokenizer=tokenizer)
    per_type: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for pred, ref in zip(inputs.predictions, inputs.references, strict=True):
        scores = scorer.score(ref, pred)  # rouge-score takes (target, prediction)
        for t in ROUGE_TYPES:
            per_type[t].append(float(scores[t].fmeasure))
    details = {
        "library": f"rouge-score {version('rouge-score')}",
        "score": "F-measure, mean of per-example scores",
        "use_stemmer": inputs.rouge_stemmer,
        "tokenizer": tok_name if tok_name == "unicode" else "default (rouge-score: lowercase, [a-z0-9] only)",
    }
    inputs.cache["rouge"] = {"per_type": per_type, "details": details}
    return inputs.cache["rouge"]


def _rouge(rouge_type: str):
    def fn(inputs: MetricInputs) -> Score:
        result = _rouge_all(inputs)
        details = dict(result["details"])  # type: ignore[arg-type]
        if rouge_type == "rougeLsum":
            details["sentence_split"] = "newlines"
        return Score(per_example=result["per_type"][rouge_type], details=details)  # type: ignore[index]

    fn.__name__ = rouge_type
    return fn


rouge1, rouge2, rougeL, rougeLsum = (_rouge(t) for t in ROUGE_TYPES)


# -- n-gram Jaccard -------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")


def word_ngrams(text: str, orders: tuple[int, ...] = (1, 2)) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for n in orders for i in range(len(words) - n + 1)}


def ngram_jaccard_score(prediction: str, reference: str) -> float:
    a, b = word_ngrams(prediction), word_ngrams(reference)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def ngram_jaccard(inputs: MetricInputs) -> Score:
    scores = [ngram_jaccard_score(p, r) for p, r in zip(inputs.predictions, inputs.references, strict=True)]
    return Score(per_example=scores, details={"ngrams": "word 1-grams and 2-grams, lowercased, as sets"})


# -- SQuAD exact match and token F1 ---------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1: lowercase, remove punctuation, remove articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1_score(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


_SQUAD = {"normalization": "SQuAD v1.1 (lowercase, no punctuation, no a/an/the, single spaces)"}


def exact_match(inputs: MetricInputs) -> Score:
    pairs = zip(inputs.predictions, inputs.references, strict=True)
    return Score(per_example=[exact_match_score(p, r) for p, r in pairs], details=dict(_SQUAD))


def token_f1(inputs: MetricInputs) -> Score:
    pairs = zip(inputs.predictions, inputs.references, strict=True)
    return Score(per_example=[token_f1_score(p, r) for p, r in pairs], details=dict(_SQUAD))
