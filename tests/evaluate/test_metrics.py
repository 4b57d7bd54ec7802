"""Every metric checked against the library users trust (sacrebleu, rouge-score, scikit-learn) called
directly on fixed examples, or by hand where the definition is ours (EM/F1, n-gram Jaccard)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.metrics import METRICS, MetricInputs, compute, get_metric, mean_stderr, resolve
from tunelab.evaluate.metrics.classification import UNPARSED, _macro_from_counts, parse_label
from tunelab.evaluate.metrics.perplexity import CONVENTION, completion_ids
from tunelab.evaluate.metrics.text import (
    UnicodeTokenizer,
    exact_match_score,
    ngram_jaccard_score,
    normalize_answer,
    token_f1_score,
)

PREDS = [
    "The cat sat on the mat.",
    "Paris is the capital of France",
    "Employees get 25 days of leave.",
    "hello there",
    "Late claims are rejected.\nSubmit expense reports within thirty days.",
]
REFS = [
    "The cat is sitting on the mat.",
    "The capital of France is Paris.",
    "Employees get 25 days of paid leave per year.",
    "goodbye world",
    "Submit expense reports within thirty days.\nLate claims are rejected.",
]


def run(names, preds=PREDS, refs=REFS, **kw):
    return compute(names, MetricInputs(list(preds), list(refs), **kw))


# -- registry -------------------------------------------------------------------------------------


def test_every_metric_is_one_complete_record():
    for name, m in METRICS.items():
        assert m.name == name
        assert m.aggregation in ("mean", "corpus")
        assert isinstance(m.higher_is_better, bool) and m.description
    assert not METRICS["perplexity"].higher_is_better
    assert METRICS["bleu"].aggregation == "corpus" and METRICS["rougeL"].aggregation == "mean"


def test_unknown_metric_is_a_user_error():
    with pytest.raises(TunelabError, match="unknown metric.*bleuu.*available"):
        resolve(["bleu", "bleuu"])
    with pytest.raises(TunelabError):
        get_metric("nope")
    assert [m.name for m in resolve(["bleu", "bleu", "chrf"])] == ["bleu", "chrf"]


def test_mean_stderr_is_sample_std_over_sqrt_n():
    values = [1.0, 0.0, 1.0, 1.0]
    mean, se = mean_stderr(values)
    assert mean == 0.75
    assert se == pytest.approx(np.std(values, ddof=1) / 2)
    assert mean_stderr([0.3]) == (0.3, None)


# -- sacrebleu ------------------------------------------------------------------------------------


def test_bleu_and_chrf_match_sacrebleu_corpus_scores():
    import sacrebleu
    from sacrebleu.metrics import BLEU, CHRF

    out = run(["bleu", "chrf"])
    assert out["bleu"].value == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score, abs=1e-9)
    assert out["chrf"].value == pytest.approx(sacrebleu.corpus_chrf(PREDS, [REFS]).score, abs=1e-9)
    bleu_metric = BLEU()
    bleu_metric.corpus_score(PREDS, [REFS])
    assert out["bleu"].details["signature"] == bleu_metric.get_signature().format()
    assert "tok:13a" in out["bleu"].details["signature"] and "smooth:exp" in out["bleu"].details["signature"]
    chrf_metric = CHRF()
    chrf_metric.corpus_score(PREDS, [REFS])
    assert out["chrf"].details["signature"] == chrf_metric.get_signature().format()


def test_corpus_bootstrap_interval_is_fixed_and_brackets_plausible_values():
    import sacrebleu

    a, b = run(["bleu"])["bleu"], run(["bleu"])["bleu"]
    assert a.ci == b.ci  # fixed seed
    low, high = a.ci
    assert 0 <= low <= high <= 100 and low < high
    assert a.stderr is None and a.to_dict()["ci95"] == [low, high]
    # the resampling recomputes corpus BLEU from pooled statistics: a resample that picks every
    # example once reproduces sacrebleu's corpus score
    from tunelab.evaluate.metrics import text

    seen = []

    def capture(n, statistic, samples, seed):
        seen.append(statistic(np.arange(n)))
        return None

    orig = text.bootstrap_ci
    text.bootstrap_ci = capture
    try:
        run(["bleu"])
    finally:
        text.bootstrap_ci = orig
    assert seen[0] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)


# -- ROUGE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stemmer", [True, False])
def test_rouge_matches_rouge_score_means(stemmer):
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    out = run(types, rouge_stemmer=stemmer)
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stemmer)
    direct = [scorer.score(r, p) for p, r in zip(PREDS, REFS, strict=True)]
    for t in types:
        expected = [s[t].fmeasure for s in direct]
        assert out[t].per_example == pytest.approx(expected)
        assert out[t].value == pytest.approx(float(np.mean(expected)))
        assert out[t].stderr == pytest.approx(float(np.std(expected, ddof=1) / math.sqrt(len(expected))))
        assert out[t].details["use_stemmer"] is stemmer
    # Lsum splits on newlines: the last example's swapped sentences match fully only in Lsum
    assert out["rougeLsum"].per_example[4] == pytest.approx(1.0)
    assert out["rougeL"].per_example[4] < 0.9
    assert out["rougeLsum"].details["sentence_split"] == "newlines"


def test_rouge_unicode_tokenizer_scores_non_latin_text():
    preds, refs = ["我爱北京", "Привет мир"], ["我爱上海", "привет всем"]
    default = run(["rouge1"], preds, refs, rouge_tokenizer="default")["rouge1"]
    assert default.value == 0.0  # rouge-score's tokenizer drops everything outside [a-z0-9]
    auto = run(["rouge1"], preds, refs)["rouge1"]
    assert auto.details["tokenizer"] == "unicode"
    # by hand: 我 爱 北 京 vs 我 爱 上 海 share 2 of 4 -> F 0.5; привет мир vs привет всем -> F 0.5
    assert auto.per_example == pytest.approx([0.5, 0.5])
    tok = UnicodeTokenizer(use_stemmer=True)
    assert tok.tokenize("Running dogs 中文 café") == ["run", "dog", "中", "文", "café"]


def test_rouge_auto_keeps_rouge_score_tokenizer_for_english():
    assert run(["rougeL"])["rougeL"].details["tokenizer"].startswith("default")


# -- n-grams, EM, F1 (by hand) ---------------------------------------------------------------------


def test_ngram_jaccard_by_hand():
    # {the, cat, sat, the cat, cat sat} vs {the, cat, ran, the cat, cat ran}: 3 shared of 7
    assert ngram_jaccard_score("The cat sat", "the cat ran") == pytest.approx(3 / 7)
    assert ngram_jaccard_score("", "") == 1.0
    assert ngram_jaccard_score("a", "") == 0.0
    out = run(["ngram_jaccard"], ["The cat sat", "x y"], ["the cat ran", "x y"])["ngram_jaccard"]
    assert out.value == pytest.approx((3 / 7 + 1.0) / 2)


def test_squad_normalisation_exact_match_and_f1_by_hand():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a day") == "apple day"
    assert exact_match_score("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match_score("Eiffel Tower in Paris", "eiffel tower") == 0.0
    # pred [eiffel tower in paris] vs ref [eiffel tower]: P 2/4, R 2/2 -> F1 2/3
    assert token_f1_score("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3)
    assert token_f1_score("nothing shared", "eiffel tower") == 0.0
    assert token_f1_score("the", "a") == 1.0  # both normalise to empty
    out = run(
        ["exact_match", "token_f1"], ["The Eiffel Tower!", "Eiffel Tower in Paris"], ["eiffel tower"] * 2
    )
    assert out["exact_match"].value == 0.5
    assert out["token_f1"].value == pytest.approx((1 + 2 / 3) / 2)


# -- classification ---------------------------------------------------------------------------------

LABELS = ["it", "hr", "facilities"]
GOLD = ["it", "hr", "facilities", "it", "hr", "it", "facilities", "hr"]
GENERATED = [
    "IT.",
    "hr",
    "Facilities - the printer",
    "I think this is hr",
    "maybe it or hr",
    "it",
    "no idea",
    "HR",
]


def test_parse_label_rules():
    assert parse_label("Positive.", ["positive", "negative"]) == "positive"
    assert parse_label("negative: the tone is bad", ["positive", "negative"]) == "negative"
    assert parse_label("I would say it is negative", ["positive", "negative"]) == "negative"
    assert parse_label("positive or negative", ["positive", "negative"]) is None  # ambiguous
    assert parse_label("no idea", ["positive", "negative"]) is None
    assert parse_label("this is an IT issue", ["it", "it issue"]) == "it issue"  # the longer label counts
    assert parse_label("Facilities - the printer", ["it", "facilities"]) == "facilities"


def test_classification_matches_scikit_learn():
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    out = run(["accuracy", "precision", "recall", "f1"], GENERATED, GOLD, label_set=LABELS)
    parsed = [parse_label(g, LABELS) or UNPARSED for g in GENERATED]
    assert parsed == ["it", "hr", "facilities", "hr", UNPARSED, "it", UNPARSED, "hr"]
    assert out["accuracy"].value == pytest.approx(accuracy_score(GOLD, parsed))
    p, r, f, _ = precision_recall_fscore_support(
        GOLD, parsed, labels=LABELS, average="macro", zero_division=0
    )
    assert out["precision"].value == pytest.approx(p)
    assert out["recall"].value == pytest.approx(r)
    assert out["f1"].value == pytest.approx(f)
    details = out["f1"].details
    assert details["unparsed"] == 2 and details["average"] == "macro"
    per_p, per_r, per_f, support = precision_recall_fscore_support(
        GOLD, parsed, labels=LABELS, average=None, zero_division=0
    )
    for i, label in enumerate(LABELS):
        assert details["per_class"][label] == pytest.approx(
            {"precision": per_p[i], "recall": per_r[i], "f1": per_f[i], "support": support[i]}
        )
    cm = confusion_matrix(GOLD, parsed, labels=[*LABELS, UNPARSED])
    assert details["confusion_matrix"]["matrix"] == cm.tolist()
    assert out["accuracy"].row_fields["predicted_label"][4] is None
    low, high = out["f1"].ci
    assert low <= high


def test_bootstrap_macro_arithmetic_equals_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(1)
    true_idx, pred_idx = rng.integers(0, 3, 50), rng.integers(0, 4, 50)  # index 3 = unparsed
    p, r, f, _ = precision_recall_fscore_support(
        true_idx, pred_idx, labels=[0, 1, 2], average="macro", zero_division=0
    )
    assert _macro_from_counts(true_idx, pred_idx, 3) == pytest.approx((p, r, f))


def test_reference_outside_label_set_is_a_user_error():
    with pytest.raises(TunelabError, match="not in the label set"):
        run(["accuracy"], ["it"], ["legal"], label_set=LABELS)


def test_label_set_defaults_to_the_references():
    out = run(["accuracy"], ["b", "a"], ["a", "b"])
    assert out["accuracy"].details["labels"] == ["a", "b"] and out["accuracy"].value == 0.0


# -- perplexity -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # a hidden-size-32 model gains nothing from threads
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


PPL_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Leave per year?"}],
    [{"role": "user", "content": "hello"}],
]
PPL_REFS = ["Paris is the capital of France.", "25 days of paid leave.", "hello world question answer"]


def test_completion_tokens_are_the_answer_and_end_of_turn(tiny_tokenizer):
    head, comp = completion_ids(tiny_tokenizer, PPL_PROMPTS[0], PPL_REFS[0])
    assert (
        tiny_tokenizer.decode(head)
        == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tiny_tokenizer.decode(comp) == PPL_REFS[0] + "<|im_end|>"
    head, comp = completion_ids(tiny_tokenizer, "Q: capital?\nA:", " Paris")
    assert tiny_tokenizer.decode(comp) == " Paris"


def test_perplexity_by_hand_and_batched(model, tiny_tokenizer):
    total_nll, total_tokens, per_example = 0.0, 0, []
    for prompt, ref in zip(PPL_PROMPTS, PPL_REFS, strict=True):
        head, comp = completion_ids(tiny_tokenizer, prompt, ref)
        ids = torch.tensor([head + comp])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        nll = -sum(float(logp[len(head) + j - 1, t]) for j, t in enumerate(comp))
        total_nll += nll
        total_tokens += len(comp)
        per_example.append(math.exp(nll / len(comp)))
    expected = math.exp(total_nll / total_tokens)
    for batch_size in (1, 3):
        inputs = MetricInputs(
            ["x"] * 3,
            PPL_REFS,
            prompts=PPL_PROMPTS,
            model=model,
            tokenizer=tiny_tokenizer,
            batch_size=batch_size,
        )
        out = compute(["perplexity"], inputs)["perplexity"]
        assert out.value == pytest.approx(expected, rel=1e-5)
        assert out.per_example == pytest.approx(per_example, rel=1e-5)
        assert out.details["convention"] == CONVENTION and out.details["tokens"] == total_tokens
        assert out.ci[0] <= out.ci[1] and out.aggregation == "corpus"


def test_perplexity_needs_a_model():
    with pytest.raises(TunelabError, match="needs the model"):
        run(["perplexity"], ["a"], ["b"])
