"""The metric registry: every metric a user can name, as one record each.

Which numbers are corpus-level and which are means of per-example scores is part of each record
(`aggregation`) and is written next to every value in the summary.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...errors import TunelabError
from . import classification, perplexity, text
from .base import Metric, MetricInputs, MetricValue, Score, bootstrap_ci, mean_stderr

_RECORDS = [
    Metric("bleu", text.bleu, True, "corpus",
           "sacrebleu corpus_bleu, default settings (13a, exp smoothing, mixed case, 4-grams), 0-100"),
    Metric("chrf", text.chrf, True, "corpus", "sacrebleu corpus_chrf, default settings (chrF2, char 6-grams), 0-100"),
    Metric("rouge1", text.rouge1, True, "mean", "rouge-score ROUGE-1 F-measure, mean over examples"),
    Metric("rouge2", text.rouge2, True, "mean", "rouge-score ROUGE-2 F-measure, mean over examples"),
    Metric("rougeL", text.rougeL, True, "mean", "rouge-score ROUGE-L (LCS) F-measure, mean over examples"),
    Metric("rougeLsum", text.rougeLsum, True, "mean",
           "rouge-score ROUGE-Lsum (summary-level LCS, sentences split on newlines) F-measure, mean over examples"),
    Metric("ngram_jaccard", text.ngram_jaccard, True, "mean",
           "Jaccard similarity of the sets of word 1-grams and 2-grams (lowercased), mean over examples"),
    Metric("exact_match", text.exact_match, True, "mean",
           "SQuAD exact match after normalisation (lowercase, no punctuation/articles), mean over examples"),
    Metric("token_f1", text.token_f1, True, "mean",
           "SQuAD token-overlap F1 after the same normalisation, mean over examples"),
    Metric("accuracy", classification.accuracy, True, "mean",
           "label parsed from the generation equals the gold label (unparsed counts as wrong)"),
    Metric("precision", classification.precision, True, "corpus",
           "scikit-learn precision, average='macro' over the label set, zero_division=0"),
    Metric("recall", classification.recall, True, "corpus",
           "scikit-learn recall, average='macro' over the label set, zero_division=0"),
    Metric("f1", classification.f1, True, "corpus",
           "scikit-learn F1, average='macro' over the label set, zero_division=0"),
    Metric("perplexity", perplexity.perplexity, False, "corpus",
           f"exp(mean NLL over reference completion tokens), {perplexity.CONVENTION}", needs_model=True),
]

METRICS: dict[str, Metric] = {m.name: m for m in _RECORDS}
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")


def available() -> list[str]:
    return list(METRICS)


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise TunelabError(f"unknown metric '{name}'; available: {', '.join(METRICS)}") from None


def resolve(names: Sequence[str]) -> list[Metric]:
    """Metric records for `names` (duplicates dropped, order kept); unknown names are one error."""
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not names:
        raise TunelabError(f"no metrics given; pick from: {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise TunelabError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}")
    return [METRICS[n] for n in names]


def compute(names: Sequence[str], inputs: MetricInputs) -> dict[str, MetricValue]:
    """Every named metric on the same inputs (shared work, such as one ROUGE pass, is done once)."""
    return {m.name: m.compute(inputs) for m in resolve(names)}


__all__ = [
    "CLASSIFICATION_METRICS",
    "METRICS",
    "Metric",
    "MetricInputs",
    "MetricValue",
    "Score",
    "available",
    "bootstrap_ci",
    "compute",
    "get_metric",
    "mean_stderr",
    "resolve",
]
