"""Constrained decoding on the tiny random Llama: every row of a batch parses against its own JSON schema
(enums, nested objects, arrays, bounded integers), rows finish at different steps, greedy and sampled,
and unconstrained rows of the same batch are left alone. A random model is the right test: without
the grammar it never writes JSON."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tunelab.errors import TunelabError
from tunelab.llm.schema import bound_schema, reply_schema, token_budget
from tunelab.models.generate import GenerationConfig, Generator

from .test_models_generate import PROMPTS, varied_model


class Step(BaseModel):
    name: str
    kind: Literal["read", "write", "check"]
    done: bool


class Owner(BaseModel):
    team: str
    size: int = Field(ge=1, le=12)


class Plan(BaseModel):
    title: str
    owner: Owner
    steps: list[Step] = Field(min_length=1)


def plan_schema(n_steps: int) -> dict:
    schema = reply_schema(Plan)
    schema["properties"]["steps"]["minItems"] = schema["properties"]["steps"]["maxItems"] = n_steps
    return bound_schema(schema, max_tokens=120)


@pytest.fixture(scope="module")
def gen(tiny_model_dir, tiny_tokenizer):
    return Generator(varied_model(tiny_model_dir), tiny_tokenizer, threads=1)


def check(out, n_steps: int, schema: dict) -> None:
    value = Plan.model_validate(json.loads(out.text))  # parses, and matches the schema
    assert len(value.steps) == n_steps
    assert len(value.title) <= schema["properties"]["title"]["maxLength"]
    assert out.finish_reason == "stop" and out.n_new_tokens <= token_budget(schema)


@pytest.mark.usefixtures("one_torch_thread")
def test_every_row_of_a_batch_parses_against_its_own_schema(gen):
    counts = [1, 3, 2, 1, 2]  # different item counts: rows finish at different steps
    schemas = [plan_schema(n) for n in counts]
    cfg = GenerationConfig(max_new_tokens=400, batch_size=3)

    free = gen.generate(PROMPTS, cfg)
    assert not any(_parses(o.text) for o in free)  # the random model never writes JSON on its own

    outs = gen.generate(PROMPTS, cfg, schemas=schemas)
    for out, n, schema in zip(outs, counts, schemas, strict=True):
        check(out, n, schema)
    assert len({o.n_new_tokens for o in outs}) > 1

    sampled = gen.generate(PROMPTS, GenerationConfig(max_new_tokens=400, batch_size=2, temperature=1.0,
                                                     top_p=0.95, seed=3), schemas=schemas)
    for out, n, schema in zip(sampled, counts, schemas, strict=True):
        check(out, n, schema)
    assert [o.text for o in sampled] != [o.text for o in outs]


@pytest.mark.usefixtures("one_torch_thread")
def test_rows_without_a_schema_decode_as_before(gen):
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4)
    free = gen.generate(PROMPTS[:4], cfg)
    mixed = gen.generate(PROMPTS[:4], cfg, schemas=[None, plan_schema(1), None, plan_schema(2)])
    assert [mixed[0].text, mixed[2].text] == [free[0].text, free[2].text]
    # 12 tokens are too few for a whole plan, but the constrained rows start it
    assert mixed[1].text.startswith('{"title":"') and mixed[3].text.startswith('{"title":"')
    assert not free[1].text.startswith("{")


def test_a_schema_per_prompt_is_checked(gen):
    with pytest.raises(TunelabError, match="2 schemas for 1 prompts"):
        gen.generate(PROMPTS[:1], schemas=[plan_schema(1), None])


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
