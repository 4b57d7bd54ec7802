"""Labels chosen by log-likelihood (the argmax of the model's own scores, checked by hand) and by generation
under the label set's choice grammar (every answer is exactly one label)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.evaluate import run_eval
from tunelab.evaluate.label_choice import choose_labels


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def _by_hand(model, tokenizer, prompt, label: str) -> float:
    context = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + label, add_special_tokens=False)["input_ids"]
    assert full[: len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
    return sum(logp[i - 1, full[i]].item() for i in range(len(ctx), len(full)))


def test_choice_is_the_argmax_of_per_character_loglik(model, tiny_tokenizer):
    labels = ["it", "hr", "facilities"]
    prompts = [[{"role": "user", "content": "My laptop will not boot"}], [{"role": "user", "content": "Payslip"}]]
    outputs = choose_labels(model, tiny_tokenizer, prompts, labels, batch_size=4)
    for prompt, out in zip(prompts, outputs, strict=True):
        scores = {lab: _by_hand(model, tiny_tokenizer, prompt, lab) / len(lab) for lab in labels}
        assert out.text == max(scores, key=scores.get)
        assert out.finish_reason == "loglik"
    summed = choose_labels(model, tiny_tokenizer, prompts[:1], labels, normalise="sum")
    scores = {lab: _by_hand(model, tiny_tokenizer, prompts[0], lab) for lab in labels}
    assert summed[0].text == max(scores, key=scores.get)


def test_run_eval_loglik_mode_never_unparsed(model, tiny_tokenizer):
    records = [Record(kind="label", text="My laptop will not boot", label="it"),
               Record(kind="label", text="Payslip question", label="hr")]
    answered: list[int] = []
    result = run_eval(model, tiny_tokenizer, records, ["accuracy", "f1"], None, label_set=["it", "hr", "facilities"],
                      label_mode="loglik", on_batch=answered.append)
    assert sum(answered) == 2  # progress counts prompts whose every label is scored
    assert result.metrics["f1"].details["unparsed"] == 0
    assert all(r["prediction"] in ("it", "hr", "facilities") for r in result.rows)
    assert result.generation["label_mode"] == "loglik"
    with pytest.raises(TunelabError, match="at least two labels"):
        choose_labels(model, tiny_tokenizer, [[{"role": "user", "content": "x"}]], ["only"])


def test_generate_mode_decodes_one_label_per_row_and_scores_it(tiny_model_dir, tiny_tokenizer):
    """The random model, free, writes no label; under the choice grammar every answer is a label, so
    nothing is unparsed and accuracy is the share of exact matches. Chat records in the same file are
    answered freely."""
    from tunelab.models.generate import GenerationConfig, Generator

    from ..models.test_models_generate import varied_model

    model = varied_model(tiny_model_dir)
    texts = ["My laptop will not boot", "Payslip question", "The lift is broken", "VPN drops", "Leave request"]
    gold = ["it", "hr", "facilities", "it", "hr"]
    records = [Record(kind="label", text=t, label=g) for t, g in zip(texts, gold, strict=True)]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=2)
    free = Generator(model, tiny_tokenizer, threads=1).generate([[{"role": "user", "content": t}] for t in texts], cfg)
    assert not any(o.text in gold for o in free)

    result = run_eval(model, tiny_tokenizer, records, ["accuracy", "f1"], None, cfg, threads=1)
    predictions = [r["prediction"] for r in result.rows]
    assert all(p in ("it", "hr", "facilities") for p in predictions)
    assert result.metrics["f1"].details["unparsed"] == 0
    assert result.metrics["accuracy"].value == sum(p == g for p, g in zip(predictions, gold, strict=True)) / 5
    assert result.generation["label_grammar"] == "choice"

    given = run_eval(model, tiny_tokenizer, records[:2], ["accuracy"], None, cfg, label_set=["it", "hr", "other"],
                     threads=1)
    assert all(r["prediction"] in ("it", "hr", "other") for r in given.rows)

    with pytest.raises(TunelabError, match=r"one label only \('it'\).*--labels"):  # a choice of one scores 100%
        run_eval(model, tiny_tokenizer, records[:1], ["accuracy"], None, cfg, threads=1)

    chat = Record(kind="chat", messages=[{"role": "user", "content": texts[0]}, {"role": "assistant", "content": "it"}])
    mixed = run_eval(model, tiny_tokenizer, [chat, *records[1:3]], ["token_f1"], None, cfg, threads=1)
    assert mixed.rows[0]["prediction"] == free[0].text and mixed.rows[1]["prediction"] in ("hr", "facilities")
