"""The generation engine on the tiny Llama: batched greedy equals per-prompt HF generate, stop strings,
end-of-sequence per row, max tokens, left padding, input order, seeded sampling."""

from __future__ import annotations

import re

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.models.generate import GenerationConfig, Generator, _left_pad

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "hello"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "How many days of paid leave do employees get per year?"},
    ],
    [{"role": "user", "content": "Contact the IT helpdesk"}],
    [{"role": "user", "content": "Expense reports are due within 30 days of purchase. When are they due?"}],
]


def varied_model(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # The fixture's init (std 0.02) makes a tiny model repeat one token forever, which would make
    # every equality below trivially true; larger weights give varied, prompt-dependent output.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return varied_model(tiny_model_dir)


@pytest.fixture(scope="module")
def gen(model, tiny_tokenizer):
    # one thread: a hidden-size-32 model gains nothing from more, and loses a lot on a busy machine
    return Generator(model, tiny_tokenizer, threads=1)


def hf_sequential(model, gen: Generator, prompts, max_new: int, stop_ids: set[int]) -> list[list[int]]:
    """The peer: batch-1 `model.generate(do_sample=False)` per prompt, end tokens stripped."""
    out = []
    for p in prompts:
        ids = torch.tensor([gen.encode(p)])
        with torch.inference_mode():
            seq = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=sorted(stop_ids),
                pad_token_id=gen.pad_id,
            )
        new = seq[0, ids.shape[1] :].tolist()
        cut = next((i for i, t in enumerate(new) if t in stop_ids), len(new))
        out.append(new[:cut])
    return out


def test_batched_greedy_equals_sequential_hf_generate(model, gen):
    expected = hf_sequential(model, gen, PROMPTS, 12, gen.stop_token_ids)
    assert len({tuple(e) for e in expected}) == len(PROMPTS), "outputs should differ per prompt"
    outs = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=12, batch_size=3))
    assert [o.token_ids for o in outs] == expected
    for o, exp in zip(outs, expected, strict=True):
        assert o.text == gen.tokenizer.decode(exp, skip_special_tokens=True)
        assert o.n_prompt_tokens > 0 and o.latency_s > 0


def test_shared_prefix_is_computed_once_and_changes_nothing(model, gen):
    system = {"role": "system", "content": "Answer briefly, using the employee handbook and nothing else."}
    prompts = [[system, *p[-1:]] for p in PROMPTS]
    shapes = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda mod, inp, out: shapes.append(tuple(inp[0].shape))
    )
    try:
        outs = gen.generate(prompts, GenerationConfig(max_new_tokens=10, batch_size=5))
    finally:
        hook.remove()
    shared = shapes[0][1]
    assert shapes[0][0] == 1 and shared >= gen.min_shared_prefix  # the prefix, once
    assert shapes[1][0] == 5 and shapes[1][1] == max(len(gen.encode(p)) for p in prompts) - shared
    assert [o.token_ids for o in outs] == hf_sequential(model, gen, prompts, 10, gen.stop_token_ids)


def test_end_of_sequence_finishes_only_its_row(model, gen):
    # Make a token the first prompt emits early an end-of-sequence token: that row must stop there
    # while the rest of the batch keeps going, exactly as per-prompt generation does.
    first = gen.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=8))[0].token_ids
    saved = gen.stop_token_ids
    gen.stop_token_ids = saved | {first[2]}
    try:
        expected = hf_sequential(model, gen, PROMPTS, 10, gen.stop_token_ids)
        outs = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=10, batch_size=5))
    finally:
        gen.stop_token_ids = saved
    assert [o.token_ids for o in outs] == expected
    assert outs[0].finish_reason == "stop"
    assert len(outs[0].token_ids) <= 2
    assert outs[0].n_new_tokens == len(outs[0].token_ids) + 1  # the end token was generated too
    assert outs[0].stop_token_id == first[2]  # which end token: grpo trains on it
    assert any(o.finish_reason == "length" and len(o.token_ids) == 10 for o in outs)
    assert all(o.stop_token_id is None for o in outs if o.finish_reason == "length")


def test_max_new_tokens_and_length_reason(gen):
    outs = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=5, batch_size=2))
    for o in outs:
        assert o.n_new_tokens <= 5
        if o.finish_reason == "length":
            assert o.n_new_tokens == len(o.token_ids) == 5


def test_stop_string_cuts_text_and_stops_early(gen):
    full = gen.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=16))[0]
    # a stop string of plain letters from the middle of the answer (byte-fallback tokens decode to
    # replacement characters, which make poor stop strings)
    found = re.search(r"[A-Za-z]{2,}", full.text[3:])
    assert found, full.text
    stop = found.group(0)
    cut = gen.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=16, stop=[stop]))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert stop not in cut.text
    assert cut.n_new_tokens < full.n_new_tokens


def test_order_preserved_and_independent_of_batch_size(gen):
    cfg1 = GenerationConfig(max_new_tokens=6, batch_size=1)
    single = [gen.generate([p], cfg1)[0].token_ids for p in PROMPTS]
    for bs in (2, 4, 16):
        outs = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=6, batch_size=bs))
        assert [o.token_ids for o in outs] == single
    reversed_outs = gen.generate(PROMPTS[::-1], GenerationConfig(max_new_tokens=6, batch_size=4))
    assert [o.token_ids for o in reversed_outs] == single[::-1]


def test_left_padding_layout():
    ids, attn = _left_pad([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attn.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prefill_projects_only_the_last_position(model, gen):
    seen = []
    handle = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    try:
        gen.generate(PROMPTS, GenerationConfig(max_new_tokens=3, batch_size=5))
    finally:
        handle.remove()
    assert seen and all(n == 1 for n in seen)


def test_sampling_is_seeded_per_prompt(gen):
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.9, top_p=0.95, top_k=50, seed=3, batch_size=2)
    a = [o.token_ids for o in gen.generate(PROMPTS, cfg)]
    b = [o.token_ids for o in gen.generate(PROMPTS, GenerationConfig(**{**cfg.__dict__, "batch_size": 5}))]
    assert a == b  # same seed: same draws, whatever the batching
    c = [o.token_ids for o in gen.generate(PROMPTS, GenerationConfig(**{**cfg.__dict__, "seed": 4}))]
    assert c != a


def test_top_k_one_and_tiny_top_p_are_greedy(gen):
    greedy = [o.token_ids for o in gen.generate(PROMPTS, GenerationConfig(max_new_tokens=6))]
    k1 = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=6, temperature=1.0, top_k=1))
    p0 = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=1e-9))
    assert [o.token_ids for o in k1] == greedy
    assert [o.token_ids for o in p0] == greedy


def test_prompt_rendering(gen, tiny_tokenizer):
    assert gen.encode("hello world") == tiny_tokenizer("hello world")["input_ids"]  # raw text: no template
    text = gen.render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    plain = Generator(gen.model, tiny_tokenizer, chat_template=False, threads=1)
    assert plain.render([{"role": "system", "content": "a"}, {"role": "user", "content": "b"}]) == "a\n\nb"


def test_stop_tokens_include_end_of_turn(gen, tiny_tokenizer):
    assert tiny_tokenizer.convert_tokens_to_ids("<|im_end|>") in gen.stop_token_ids


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_peft_models_match_their_own_generate(tiny_model_dir, tiny_tokenizer, method):
    # LoRA runs through the engine's own loop; prompt tuning prepends virtual tokens inside every
    # forward call, so the engine hands it to PEFT's generate. Both must equal per-prompt generate.
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    config = (
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        if method == "lora"
        else PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    peft_model = get_peft_model(varied_model(tiny_model_dir), config).eval()
    gen = Generator(peft_model, tiny_tokenizer, threads=1)
    assert gen._via_hf_generate is (method == "prompt_tuning")
    outs = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=5))
    assert [o.token_ids for o in outs] == hf_sequential(peft_model, gen, PROMPTS, 8, gen.stop_token_ids)


def test_training_mode_is_restored(model, gen):
    model.train()
    try:
        gen.generate(PROMPTS[:1], GenerationConfig(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_k": -2},
        {"batch_size": 0},
        {"stop": [""]},
    ],
)
def test_bad_settings_are_user_errors(kwargs):
    with pytest.raises(TunelabError):
        GenerationConfig(**kwargs)
