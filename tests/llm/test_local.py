"""The local backend on the tiny model, and the same model served over HTTP through the loopback server."""

from __future__ import annotations

import pytest
import torch

from tunelab.llm import CallCache, LocalBackend, OpenAIBackend, backend_from_spec

CONVS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
    [{"role": "user", "content": "How many days of paid leave?"}],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return LocalBackend(str(tiny_model_dir), batch_size=2, threads=1)


def test_local_backend_answers_in_order_like_the_generator(local, tiny_model_dir):
    from tunelab.models.generate import GenerationConfig, Generator

    out = local.complete(CONVS, max_tokens=6)
    assert all(c.ok and c.error is None and c.latency_s > 0 for c in out)
    assert all(c.finish_reason in ("stop", "length") and 1 <= c.completion_tokens <= 7 for c in out)
    assert all(c.prompt_tokens > 5 for c in out)
    gen = Generator(local._model, local._tokenizer, threads=1)
    one_by_one = [gen.generate([c], GenerationConfig(max_new_tokens=6, batch_size=1))[0].text for c in CONVS]
    assert [c.text for c in out] == one_by_one
    assert local.name == f"local:{tiny_model_dir}"


def test_local_backend_reports_each_chunk_and_fails_long_prompts_per_item(local):
    seen = []
    long = [{"role": "user", "content": "fox " * 400}]  # beyond the tiny model's 256 positions
    out = local.complete([CONVS[0], long], max_tokens=3, on_result=lambda i, c: seen.append(i))
    assert sorted(seen) == [0, 1]
    assert out[0].ok  # only the prompt that does not fit fails
    assert out[1].error_kind == "generation_error" and "context is 256" in out[1].error


def test_local_backend_reports_each_batch_as_it_is_made(local, monkeypatch):
    gen = local._load()
    batches = []
    real = gen.generate
    monkeypatch.setattr(gen, "generate", lambda *a, **k: batches.append(1) or real(*a, **k))
    seen = []
    local.complete(CONVS, max_tokens=2, on_result=lambda i, c: seen.append((i, len(batches))))
    assert seen == [(0, 1), (1, 1), (2, 2)]  # batch_size 2: the first two before the third is generated


def test_local_spec_with_adapter_and_cache_skips_loading(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    peft_model.save_pretrained(tmp_path / "adapter")

    spec = f"local:{tiny_model_dir}+{tmp_path / 'adapter'}"
    cache = CallCache(tmp_path / "calls")
    backend = backend_from_spec(spec, cache=cache, threads=1)
    ident = backend.identity()
    assert ident["adapter"] == str(tmp_path / "adapter") and len(ident["adapter_sha256"]) == 64
    first = backend.complete(CONVS[:2], max_tokens=4)
    assert backend.adapter_report["changes_outputs"] is True
    fresh = backend_from_spec(spec, cache=cache, threads=1)
    again = fresh.complete(CONVS[:2], max_tokens=4)
    assert [c.text for c in again] == [c.text for c in first] and all(c.cached for c in again)
    assert fresh.backend._generator is None  # every answer came from the cache: the model never loaded

    # Retraining into the same directory changes the weights' hash, so the cache misses.
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(2)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert backend_from_spec(spec, threads=1).identity()["adapter_sha256"] != ident["adapter_sha256"]


def test_tiny_model_served_over_http_matches_the_local_backend(server, local):
    from tunelab.models.generate import GenerationConfig

    def serve(body):
        cfg = GenerationConfig(max_new_tokens=body["max_tokens"], temperature=body["temperature"], batch_size=1)
        gen = local._load()
        return gen.generate([body["messages"]], cfg)[0].text

    server.responder = serve
    remote = OpenAIBackend("tiny", server.base_url, concurrency=2)
    over_http = remote.complete(CONVS, max_tokens=5)
    direct = local.complete(CONVS, max_tokens=5)
    assert [c.text for c in over_http] == [c.text for c in direct]
    assert all(c.ok and c.attempts == 1 for c in over_http)


def test_structured_calls_decode_under_the_schema_and_stop_at_its_budget(tiny_model_dir):
    import json

    from pydantic import BaseModel, Field

    from tunelab.llm import complete_structured
    from tunelab.llm.schema import bound_schema, reply_schema, token_budget
    from tunelab.models.generate import Generator

    from ..models.test_models_generate import varied_model  # a random model that never writes JSON unaided

    class Rating(BaseModel):
        reason: str
        score: int = Field(ge=1, le=5)

    backend = LocalBackend(str(tiny_model_dir), threads=1, batch_size=2)
    backend._generator = Generator(varied_model(tiny_model_dir), backend._load().tokenizer, threads=1)
    free = backend.complete(CONVS, max_tokens=40)
    assert not any(c.text.startswith("{") for c in free)
    out = complete_structured(backend, CONVS, Rating, retries=0, max_tokens=1000)
    budget = token_budget(bound_schema(reply_schema(Rating), 1000))
    assert budget < 1000
    assert all(r.ok and r.attempts == 1 for r in out), [r.error for r in out]
    comps = backend.complete(CONVS, max_tokens=1000, json_schema=bound_schema(reply_schema(Rating), 1000))
    assert all(c.completion_tokens <= budget and c.finish_reason == "stop" for c in comps)
    assert backend.structured_output == "grammar"
    # json_mode alone: any JSON object (unbounded, so it may run to max_tokens; it still starts one)
    assert all(c.text.startswith("{") for c in backend.complete(CONVS[:2], max_tokens=20, json_mode=True))
    assert [json.loads(r.text)["score"] for r in out] == [r.value.score for r in out]
