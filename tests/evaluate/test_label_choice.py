"""Labels chosen by log-likelihood: the chosen label is the argmax of the model's own scores, checked by hand."""

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
    result = run_eval(model, tiny_tokenizer, records, ["accuracy", "f1"], None, label_set=["it", "hr", "facilities"],
                      label_mode="loglik")
    assert result.metrics["f1"].details["unparsed"] == 0
    assert all(r["prediction"] in ("it", "hr", "facilities") for r in result.rows)
    assert result.generation["label_mode"] == "loglik"
    with pytest.raises(TunelabError, match="at least two labels"):
        choose_labels(model, tiny_tokenizer, [[{"role": "user", "content": "x"}]], ["only"])
