"""The comparison table, its contrasts and their uncertainty, checked on hand-made variant results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tunelab.compare.table import build_comparison, contrast, to_csv, to_markdown


def test_paired_contrast_uses_per_question_differences(make_result):
    base = make_result("base", False, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    tuned = make_result("tuned", False, [0.2, 0.3, 0.4, 0.5, 0.6, 0.75])
    c = contrast(tuned, base, "rougeL", "fine-tuning")
    d = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.15])
    assert c.better == tuned.variant.label and c.worse == base.variant.label
    assert c.delta == pytest.approx(d.mean())
    # 6 questions: Student's t 0.975 quantile for 5 degrees of freedom (a printed table), not 1.96
    half = 2.570582 * d.std(ddof=1) / math.sqrt(len(d))
    assert c.low == pytest.approx(d.mean() - half) and c.high == pytest.approx(d.mean() + half)
    assert "t, n-1 degrees of freedom" in c.method
    # the unpaired intervals overlap a lot, but the paired difference is clearly positive
    assert c.beyond_uncertainty


def test_small_n_paired_difference_is_judged_with_t(make_result):
    # d = 0.1, 0.1, 0.1, 0.1, -0.05 (n=5): mean 0.07, se 0.03; 1.96 se = 0.0588 would call this beyond the
    # uncertainty, t(0.975, 4) se = 2.776 x 0.03 = 0.0833 does not
    base = make_result("base", False, [0.1, 0.2, 0.3, 0.4, 0.5])
    tuned = make_result("tuned", False, [0.2, 0.3, 0.4, 0.5, 0.45])
    c = contrast(tuned, base, "rougeL", "fine-tuning")
    assert c.delta == pytest.approx(0.07) and c.low == pytest.approx(0.07 - 2.776445 * 0.03)
    assert not c.beyond_uncertainty


def test_contrast_orders_by_direction_and_flags_noise(make_result):
    a = make_result("base", False, [0.1, 0.5, 0.2, 0.6])
    b = make_result("tuned", False, [0.5, 0.1, 0.6, 0.2])
    c = contrast(a, b, "rougeL", "fine-tuning")
    assert c.delta == pytest.approx(0.0) and not c.beyond_uncertainty


def test_corpus_metric_contrast_uses_interval_overlap(make_result):
    a = make_result("base", False, [0.1, 0.2, 0.3], bleu=10.0, ci=(8.0, 12.0))
    b = make_result("tuned", False, [0.1, 0.2, 0.3], bleu=20.0, ci=(17.0, 23.0))
    c = contrast(b, a, "bleu", "fine-tuning")
    assert c.delta == pytest.approx(10.0) and c.beyond_uncertainty and c.low is None
    b2 = make_result("tuned", False, [0.1, 0.2, 0.3], bleu=11.0, ci=(9.0, 13.0))
    assert not contrast(b2, a, "bleu", "fine-tuning").beyond_uncertainty


def test_comparison_rows_contrasts_reading_and_writers(make_result):
    results = [
        make_result("base", False, [0.1, 0.2, 0.15, 0.12], latency=0.4),
        make_result("base", True, [0.2, 0.25, 0.3, 0.22], prompt_tokens=200, latency=0.9),
        make_result("tuned", False, [0.4, 0.45, 0.5, 0.42], latency=0.3),
        make_result("tuned", True, [0.5, 0.55, 0.6, 0.52], prompt_tokens=210, latency=0.8),
    ]
    results[2].train = {"train_seconds": 100.0, "tokens_per_s": 500.0, "peak_rss_mb": 1200.0}
    comp = build_comparison(results, ["rougeL", "bleu"], {"recall@1": {"value": 0.5}, "mrr": {"value": 0.6}})
    assert [r["variant"] for r in comp.rows] == [r.variant.label for r in results]
    questions = {c.question for c in comp.contrasts}
    assert {"retrieval", "fine-tuning", "fine-tuning vs retrieval", "retrieval on top of fine-tuning"} <= questions
    assert comp.categories[results[0].variant.label] == {"a": pytest.approx(0.125), "b": pytest.approx(0.16)}
    text = " ".join(comp.reading)
    assert "Best on rougeL: tiny-model tuned + RAG" in text
    assert "larger than its uncertainty" in text
    assert "100.0 s of training" in text and "prompts 10.0x longer" in text
    assert "recall@1 0.500" in text
    md = to_markdown(comp)
    assert md.count("\n| tiny-model") == 4 and "± " in md and "[8.0000, 12.00]" in md
    csv_text = to_csv(comp).splitlines()
    assert csv_text[0].startswith("variant,id,model,kind,rag,n,rougeL,rougeL_stderr")
    assert len(csv_text) == 5
