"""Log-likelihood scoring checked by hand on the tiny model: one plain forward pass per request."""

from __future__ import annotations

import copy

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.evaluate.loglik import encode_requests, loglikelihood, plan_prefix_runs, resolve_max_length

TOL = 1e-4


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def bos_tokenizer(tiny_model_dir):
    """The tiny tokenizer made to add BOS by default, like Llama's and Gemma's."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", tok.bos_token_id)]
    )
    return tok


def plain(model, ctx_ids: list[int], cont_ids: list[int]) -> tuple[float, bool]:
    """The expected value: one unbatched forward over context+continuation, summed by hand."""
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    total, greedy = 0.0, True
    for i, token in enumerate(cont_ids):
        pos = len(ctx_ids) - 1 + i  # the logits at pos predict token pos + 1
        total += float(logprobs[pos, token])
        greedy = greedy and int(logits[pos].argmax()) == token
    return total, greedy


def by_hand(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    return plain(model, ctx, whole[len(ctx) :])


REQUESTS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("What is the capital of France?", " Paris"),
    ("What is the capital of France?", " Paris is the capital of France."),
    ("Employees get 25 days", " of paid leave per year."),
    ("Contact the IT helpdesk at extension", " 4455 for password resets."),
    ("hello", " world"),
]


def test_sums_exactly_the_continuation_tokens(model, tiny_tokenizer):
    got = loglikelihood(model, tiny_tokenizer, REQUESTS)
    for (context, continuation), (ll, greedy) in zip(REQUESTS, got, strict=True):
        want_ll, want_greedy = by_hand(model, tiny_tokenizer, context, continuation)
        assert ll == pytest.approx(want_ll, abs=TOL)
        assert greedy == want_greedy
    # One token more or less would change the sum: the per-token log-probs here are far from 0.
    ctx = tiny_tokenizer.encode("hello")
    cont = tiny_tokenizer.encode("hello world")[len(ctx) :]
    shorter = plain(model, ctx, cont[:-1])[0] if len(cont) > 1 else 0.0
    assert abs(got[-1][0] - shorter) > 1e-3


def test_continuation_tokens_are_whole_minus_context(tiny_tokenizer):
    (enc,) = encode_requests(tiny_tokenizer, [("The quick brown fox", " jumps")], max_length=256)
    ctx = tiny_tokenizer.encode("The quick brown fox")
    whole = tiny_tokenizer.encode("The quick brown fox jumps")
    assert list(enc.context) == ctx
    assert list(enc.continuation) == whole[len(ctx) :]


def test_trailing_spaces_move_onto_the_continuation(model, tiny_tokenizer):
    moved, plain_req = loglikelihood(
        model,
        tiny_tokenizer,
        [("The quick brown fox ", "jumps over"), ("The quick brown fox", " jumps over")],
    )
    assert moved == plain_req
    # rstrip() moves newlines too, as in lm-eval
    a, b = encode_requests(tiny_tokenizer, [("Q: hello\n", "A"), ("Q: hello", "\nA")], max_length=256)
    assert a == b
    assert list(a.context) == tiny_tokenizer.encode("Q: hello")


def test_empty_context_uses_the_prefix_token(model, tiny_tokenizer):
    bos = tiny_tokenizer.bos_token_id
    (ll, greedy), (ll2, _) = loglikelihood(
        model, tiny_tokenizer, [("", "Paris is the capital"), ("", "<|im_start|>Paris is the capital")]
    )
    cont = tiny_tokenizer.encode("Paris is the capital", add_special_tokens=False)
    assert (ll, greedy) == pytest.approx(plain(model, [bos], cont), abs=TOL)
    # A continuation that starts with the prefix token gives that token up as the context.
    assert ll2 == pytest.approx(plain(model, [bos], cont)[0], abs=TOL)


def test_empty_context_without_bos_uses_eos(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.bos_token = None
    (enc,) = encode_requests(tok, [("", "hello")], max_length=256)
    assert enc.context == (tok.eos_token_id,)


def test_special_tokens_follow_the_tokenizer_default_without_doubling_bos(bos_tokenizer):
    bos = bos_tokenizer.bos_token_id
    plain_req, already = encode_requests(
        bos_tokenizer,
        [("Paris is", " the capital"), ("<|im_start|>Paris is", " the capital")],
        max_length=256,
    )
    assert plain_req.context[0] == bos and plain_req.context[1] != bos
    assert already.context == plain_req.context  # the text's own BOS, no second one
    assert plain_req.continuation == already.continuation
    # the empty-context continuation is encoded without special tokens
    (empty,) = encode_requests(bos_tokenizer, [("", "Paris")], max_length=256)
    assert empty.context == (bos,) and bos not in empty.continuation


def test_batched_unbatched_and_full_rows_agree(model, tiny_tokenizer):
    requests = REQUESTS + [(c, " no") for c, _ in REQUESTS] + [("", "hello world")]
    reference = loglikelihood(model, tiny_tokenizer, requests, batch_size=1)
    for kwargs in ({"batch_size": 32}, {"batch_size": 3}, {"batch_size": 32, "share_prefix": False}):
        got = loglikelihood(model, tiny_tokenizer, requests, **kwargs)
        assert [g for _, g in got] == [g for _, g in reference]
        for (a, _), (b, _) in zip(got, reference, strict=True):
            assert a == pytest.approx(b, abs=TOL)


def test_shared_prefix_runs_match_plain_forwards(model, tiny_tokenizer, monkeypatch):
    import tunelab.evaluate.loglik as loglik

    monkeypatch.setattr(loglik, "_MIN_PREFIX_SAVING", 1)  # this primer is short; share it anyway
    primer = "The quick brown fox jumps over the lazy dog. Employees get 25 days of paid leave per year.\n\n"
    questions = ["Q: What is the capital of France?\nA:", "Q: Who gets leave?\nA:", "Q: hello world\nA:"]
    requests = [(primer + q, c) for q in questions for c in (" Paris", " Employees", " the lazy dog")]
    stats: dict = {}
    got = loglikelihood(model, tiny_tokenizer, requests, stats=stats)
    for (context, continuation), (ll, greedy) in zip(requests, got, strict=True):
        want_ll, want_greedy = by_hand(model, tiny_tokenizer, context, continuation)
        assert ll == pytest.approx(want_ll, abs=TOL)
        assert greedy == want_greedy
    # one pass over the shared primer, one packed row for all three questions and their nine
    # continuations, and the one-time check of a packed result against a plain pass
    assert stats["mode"] == "packed" and stats["contexts"] == 3
    assert stats["forward_calls"] == 3
    assert stats["tokens_forwarded"] < stats["tokens_full_rows"] / 2
    # a short prefix shared by few contexts is not worth a pass of its own: everything in one row
    monkeypatch.setattr(loglik, "_MIN_PREFIX_SAVING", 512)
    loglikelihood(model, tiny_tokenizer, requests, stats=stats)
    assert stats["forward_calls"] == 2  # the packed row and the check


def test_plan_prefix_runs_groups_contexts_with_a_long_common_start():
    common = tuple(range(100, 130))  # 30 tokens
    a, b, c = common + (1, 2), common + (3,), common[:5] + (9, 9)
    runs = plan_prefix_runs([b, c, a], min_share=16)
    assert (30, [a, b]) in runs
    assert (0, [c]) in runs
    # every context keeps at least one token of its own
    short = common[:20]
    assert plan_prefix_runs([short, short + (5,)], min_share=16) == [(19, [short, short + (5,)])]


def test_identical_requests_are_scored_once(model, tiny_tokenizer):
    stats: dict = {}
    got = loglikelihood(model, tiny_tokenizer, REQUESTS + REQUESTS, stats=stats)
    assert got[: len(REQUESTS)] == got[len(REQUESTS) :]
    assert stats["requests"] == 2 * len(REQUESTS)
    assert stats["unique_requests"] == len(REQUESTS)
    assert stats["batch_size"] == 32 and stats["padding_side"] == "none (packed rows)"


def test_greedy_flag_true_when_the_continuation_is_the_argmax(model, tiny_tokenizer):
    tok = tiny_tokenizer
    found = 0
    for context in ("The quick brown fox", "Employees get", "What is the capital", "Contact the IT"):
        ids = tok.encode(context)
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        text = tok.decode([nxt])
        if not text or tok.encode(context + text)[len(ids) :] != [nxt]:
            continue  # the argmax token does not survive a decode/encode round trip
        ((_, greedy),) = loglikelihood(model, tok, [(context, text)])
        assert greedy is True
        found += 1
    assert found, "no context had a round-trippable greedy token"


def test_left_truncation_to_max_length(model, tiny_tokenizer):
    context = "The quick brown fox jumps over the lazy dog. Expense reports are due within 30 days"
    continuation = " of purchase."
    ctx = tiny_tokenizer.encode(context)
    cont = tiny_tokenizer.encode(context + continuation)[len(ctx) :]
    stats: dict = {}
    ((ll, greedy),) = loglikelihood(
        model, tiny_tokenizer, [(context, continuation)], max_length=8, stats=stats
    )
    kept = (ctx + cont)[-9:]  # max_length + 1 tokens; the last one is never fed
    assert ll == pytest.approx(plain(model, kept[: len(kept) - len(cont)], cont)[0], abs=TOL)
    assert stats["truncated_requests"] == 1 and stats["max_length"] == 8
    with pytest.raises(TunelabError, match="more than the model's maximum"):
        loglikelihood(model, tiny_tokenizer, [("hello", " world " * 20)], max_length=4)


def test_max_length_comes_from_the_config(model, tiny_tokenizer):
    assert resolve_max_length(model, tiny_tokenizer) == 256


def test_deterministic_and_restores_training_mode(model, tiny_tokenizer):
    model.train()
    try:
        first = loglikelihood(model, tiny_tokenizer, REQUESTS)
        assert model.training
        assert loglikelihood(model, tiny_tokenizer, REQUESTS) == first
    finally:
        model.eval()


def test_no_requests_no_work(model, tiny_tokenizer):
    stats: dict = {}
    assert loglikelihood(model, tiny_tokenizer, [], stats=stats) == []
    assert stats["forward_calls"] == 0


def test_bad_requests_are_clear_errors(model, tiny_tokenizer):
    with pytest.raises(TunelabError, match="batch_size"):
        loglikelihood(model, tiny_tokenizer, REQUESTS, batch_size=0)
    with pytest.raises(TunelabError, match="empty continuation"):
        loglikelihood(model, tiny_tokenizer, [("", "")])
    with pytest.raises(TunelabError, match="no tokens of its own"):
        loglikelihood(model, tiny_tokenizer, [("hello", "")])
    with pytest.raises(TunelabError, match="whitespace"):
        loglikelihood(model, tiny_tokenizer, [("   ", "hello")])


def test_prompt_tuning_adapter_is_scored_in_full_rows(model, tiny_tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    )
    stats: dict = {}
    got = loglikelihood(peft_model, tiny_tokenizer, REQUESTS[:2], stats=stats)
    assert stats["mode"] == "full-rows"
    for (context, continuation), (ll, _) in zip(REQUESTS[:2], got, strict=True):
        ctx = tiny_tokenizer.encode(context)
        cont = tiny_tokenizer.encode(context + continuation)[len(ctx) :]
        with torch.no_grad():
            logits = peft_model(input_ids=torch.tensor([ctx + cont])).logits[0]
        logprobs = torch.log_softmax(logits[-len(cont) - 1 : -1].double(), dim=-1)
        want = sum(float(logprobs[i, t]) for i, t in enumerate(cont))
        assert ll == pytest.approx(want, abs=TOL)


class IgnoresMask(torch.nn.Module):
    """A model that drops the attention mask and position ids, as some architectures effectively do."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_packing_falls_back_to_full_rows_when_the_model_ignores_the_mask(model, tiny_tokenizer):
    stats: dict = {}
    got = loglikelihood(IgnoresMask(model), tiny_tokenizer, REQUESTS, stats=stats)
    assert stats["mode"] == "full-rows" and "disagreed" in stats["fallback_reason"]
    assert stats["padding_side"] == "right"
    for (context, continuation), (ll, _) in zip(REQUESTS, got, strict=True):
        assert ll == pytest.approx(by_hand(model, tiny_tokenizer, context, continuation)[0], abs=TOL)


def test_sliding_window_shorter_than_a_request_uses_full_rows(model, tiny_tokenizer):
    windowed = copy.deepcopy(model)
    windowed.config.sliding_window = 4
    stats: dict = {}
    loglikelihood(windowed, tiny_tokenizer, REQUESTS[:1], stats=stats)
    assert stats["mode"] == "full-rows" and "sliding window" in stats["fallback_reason"]


def test_short_rows_batched_with_padding_match_plain_forwards(model, tiny_tokenizer, monkeypatch):
    import tunelab.evaluate.loglik as loglik

    monkeypatch.setattr(loglik, "_ROW_TOKENS", 12)  # several padded rows per forward pass
    monkeypatch.setattr(loglik, "_MIN_PREFIX_SAVING", 1)  # and a shared prefix repeated across rows
    primer = "The quick brown fox jumps over the lazy dog. Employees get 25 days of paid leave per year.\n\n"
    requests = REQUESTS + [(primer + q, " Paris") for q in ("Q: one?", "Q: two words?", "Q: hello world?")]
    stats: dict = {}
    got = loglikelihood(model, tiny_tokenizer, requests, stats=stats)
    assert stats["mode"] == "packed"
    for (context, continuation), (ll, greedy) in zip(requests, got, strict=True):
        want_ll, want_greedy = by_hand(model, tiny_tokenizer, context, continuation)
        assert ll == pytest.approx(want_ll, abs=TOL)
        assert greedy == want_greedy
