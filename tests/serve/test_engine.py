"""The serving engine on tiny random models: continuous batching gives each request exactly what it gets
alone, newcomers join a running batch, cancels free slots, stop strings and max_tokens, several LoRA
adapters mixed in one batch, seeded sampling, and clear errors (unknown model, bad adapters, engines that
are not installed)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.serve.engine import GenerationRequest, TextTracker
from tunelab.serve.engines import ENGINES, load_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

QUESTIONS = ["What is the capital of France?", "hello", "Contact the IT helpdesk at extension 4455 for password "
             "resets. Who do I call?", "Expense reports are due within 30 days of purchase. When are they due?",
             "quick brown fox", "How many days of paid leave do employees get per year?"]


@pytest.fixture(scope="module")
def varied_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with large random weights: varied, prompt-dependent greedy output (the fixture's
    0.02-scale init repeats one token forever, which would make every equality trivially true)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("varied")
    shutil.copytree(tiny_model_dir, out, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(out)
    return out


def make_lora(model_dir: Path, out: Path, seed: int, **config) -> Path:
    """A LoRA adapter as PEFT saves it, with random (trained-looking) B matrices."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], **config}
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **settings))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(varied_dir):
    eng = load_engine("transformers", str(varied_dir), {}, device="cpu", dtype="float32", max_batch=8)
    yield eng
    eng.close()


def chat(eng, text: str) -> list[int]:
    return eng.render_chat([{"role": "user", "content": text}])


def run(eng, prompt: list[int], max_tokens: int = 24, model: str | None = None, **kw):
    return eng.submit(GenerationRequest(model or eng.model_names()[0], prompt, max_tokens, **kw)).result()


def test_concurrent_greedy_equals_alone_and_the_batch_generator(engine, varied_dir):
    from transformers import AutoModelForCausalLM

    from tunelab.models.generate import GenerationConfig, Generator

    prompts = [chat(engine, q) for q in QUESTIONS]
    lengths = [12, 30, 5, 40, 18, 25]
    alone = [run(engine, p, n) for p, n in zip(prompts, lengths, strict=True)]
    assert len({tuple(a[1]) for a in alone}) == len(prompts), "outputs should differ per prompt"
    # the peer: tunelab's static-batch generator (itself tested equal to HF generate)
    model = AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32)
    gen = Generator(model, engine.tokenizer, threads=1)
    for q, n, (text, ids, last) in zip(QUESTIONS, lengths, alone, strict=True):
        out = gen.generate([[{"role": "user", "content": q}]], GenerationConfig(max_new_tokens=n))[0]
        assert ids == out.token_ids and text == out.text and last.finish_reason == out.finish_reason
    # all at once, mixed lengths, and staggered: half join while the others are decoding
    first = [engine.submit(GenerationRequest(engine.base_name, p, n)) for p, n in zip(prompts[:3], lengths[:3],
                                                                                        strict=True)]
    running = iter(first[1])
    head = [next(running)]  # the batch is decoding now
    later = [engine.submit(GenerationRequest(engine.base_name, p, n)) for p, n in zip(prompts[3:], lengths[3:],
                                                                                        strict=True)]
    deltas = [list(s) for s in first[:1]] + [head + list(running)] + [list(s) for s in first[2:] + later]
    for (a_text, a_ids, a_last), parts in zip(alone, deltas, strict=True):
        assert sum((d.token_ids for d in parts), []) == a_ids
        assert "".join(d.text for d in parts) == a_text and parts[-1].finish_reason == a_last.finish_reason
    assert engine.stats()["peak_batch_size"] >= 4


def test_newcomers_join_the_running_batch(engine):
    long_prompt, short_prompt = chat(engine, QUESTIONS[1]), chat(engine, QUESTIONS[0])
    alone_long = run(engine, long_prompt, 60)
    assert alone_long[2].finish_reason == "length", "the long request should run its full length"
    before = len(engine.batch_trace)
    stream = engine.submit(GenerationRequest(engine.base_name, long_prompt, 60))
    deltas = iter(stream)
    parts = [next(deltas)]  # it is decoding now
    short = run(engine, short_prompt, 5)
    parts.extend(deltas)
    steps = list(engine.batch_trace)[before:]
    assert max(steps) == 2, steps  # the newcomer shared decode steps with the running request
    assert steps[-1] == 1  # and left when it was done, while the long one went on
    assert short[2].finish_reason == "length" and short[2].completion_tokens == 5
    assert sum((d.token_ids for d in parts), []) == alone_long[1]
    assert "".join(d.text for d in parts) == alone_long[0]
    assert len(parts) > 3  # streamed, not in one piece


def test_cancel_frees_the_slot_and_breaking_out_cancels(varied_dir):
    eng = load_engine("transformers", str(varied_dir), {}, device="cpu", dtype="float32", max_batch=1)
    try:
        prompt = chat(eng, QUESTIONS[1])
        a = eng.submit(GenerationRequest(eng.base_name, prompt, 200))
        a_deltas = iter(a)  # held: a dropped, half-read iterator cancels its request
        assert next(a_deltas).finish_reason is None
        b = eng.submit(GenerationRequest(eng.base_name, prompt, 3))
        assert eng.stats()["queue_depth"] == 1  # max_batch=1: b waits for a's slot
        a.cancel()
        text, ids, last = b.result()
        assert last.finish_reason == "length" and len(ids) == 3
        rest = list(a_deltas)
        assert rest[-1].finish_reason == "cancelled" and rest[-1].completion_tokens < 200
        # leaving the loop early (a client that disconnects) cancels too
        c = eng.submit(GenerationRequest(eng.base_name, prompt, 200))
        for _ in c:
            break
        assert run(eng, prompt, 2)[2].finish_reason == "length"
        assert c.cancelled and eng.stats()["batch_size"] == 0
    finally:
        eng.close()


def test_async_iteration(engine):
    prompt = chat(engine, QUESTIONS[2])

    async def consume():
        return [d async for d in engine.submit(GenerationRequest(engine.base_name, prompt, 10))]

    deltas = asyncio.run(consume())
    assert sum((d.token_ids for d in deltas), []) == run(engine, prompt, 10)[1]
    assert deltas[-1].finish_reason == "length"


def test_stop_strings_and_max_tokens(engine):
    prompt = chat(engine, QUESTIONS[3])
    text, ids, last = run(engine, prompt, 40)
    assert last.finish_reason == "length" and last.completion_tokens == 40 and len(ids) == 40
    printable = [i for i in range(5, len(text) - 3) if text[i : i + 3].isprintable() and "\ufffd" not in text[i : i + 3]]
    at = printable[len(printable) // 2]
    stop = text[at : at + 3]
    cut = text.index(stop)
    stream = engine.submit(GenerationRequest(engine.base_name, prompt, 40, stop=["zzzq", stop]))
    parts = list(stream)
    assert parts[-1].finish_reason == "stop"
    assert "".join(p.text for p in parts) == text[:cut]
    assert all(stop not in p.text for p in parts)
    assert parts[-1].completion_tokens < 40


def test_text_tracker_multibyte_and_held_back_stop(tiny_tokenizer):
    text = "naïve café 😀 über 25 days"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    tracker = TextTracker(tiny_tokenizer, [])
    pieces = [tracker.add(t) for t in ids]
    pieces.append(tracker.flush())
    assert all("\ufffd" not in p for p in pieces) and "".join(pieces) == text
    assert any(p == "" for p in pieces[:-1]), "the emoji's bytes span several tokens"
    tracker = TextTracker(tiny_tokenizer, ["25 days"])
    out = "".join(tracker.add(t) for t in ids)
    assert tracker.stopped and out == "naïve café 😀 über "
    tracker = TextTracker(tiny_tokenizer, ["über 99"])  # a stop that starts to match, then does not
    out = [tracker.add(t) for t in ids]
    assert "".join(out) + tracker.flush() == text and not tracker.stopped


def test_sampling_is_seeded_per_request(engine):
    prompt = chat(engine, QUESTIONS[4])
    kw = {"temperature": 0.9, "top_p": 0.9, "seed": 7}
    alone = run(engine, prompt, 20, **kw)[1]
    others = [engine.submit(GenerationRequest(engine.base_name, chat(engine, q), 20, temperature=1.0, seed=i))
              for i, q in enumerate(QUESTIONS)]
    mine = engine.submit(GenerationRequest(engine.base_name, prompt, 20, **kw))
    assert mine.result()[1] == alone
    [o.result() for o in others]
    assert run(engine, prompt, 20, temperature=0.9, top_p=0.9, seed=8)[1] != alone


def test_mixed_adapters_in_one_batch_match_single_adapter_models(varied_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.models.generate import GenerationConfig, Generator

    dirs = {"alpha": make_lora(varied_dir, tmp_path / "alpha", 1), "beta": make_lora(varied_dir, tmp_path / "beta", 2)}
    (dirs["beta"] / "summary.json").write_text(json.dumps({"model": str(varied_dir)}))
    eng = load_engine("transformers", str(varied_dir), dirs, device="cpu", dtype="float32")
    try:
        assert eng.model_names() == [varied_dir.name, "alpha", "beta"]
        prompts = {q: chat(eng, q) for q in QUESTIONS[:3]}
        jobs = [(name, q) for q in prompts for name in eng.model_names()]
        streams = [eng.submit(GenerationRequest(name, prompts[q], 12)) for name, q in jobs]
        got = {job: s.result()[1] for job, s in zip(jobs, streams, strict=True)}
        assert eng.stats()["peak_batch_size"] == len(jobs)  # one batch mixing the base and both adapters
    finally:
        eng.close()
    base = varied_dir.name
    for name in [base, *dirs]:
        model = AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32)
        if name != base:
            model = PeftModel.from_pretrained(model, str(dirs[name]))
        gen = Generator(model, eng.tokenizer, threads=1)
        outs = gen.generate([[{"role": "user", "content": q}] for q in prompts], GenerationConfig(max_new_tokens=12))
        for q, out in zip(prompts, outs, strict=True):
            assert got[(name, q)] == out.token_ids, (name, q)
    for q in prompts:
        assert len({tuple(got[(n, q)]) for n in [base, *dirs]}) == 3, "each adapter should change the answer"


def test_adapter_checks(varied_dir, tiny_model_dir, tmp_path):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = make_lora(tiny_model_dir, tmp_path / "other", 3)  # same shapes, another base
    with pytest.raises(TunelabError, match=r"adapter 'x' .* was trained on .*tiny-llama.*serve it with --model"):
        load_engine("transformers", str(varied_dir), {"x": other}, device="cpu")
    prompt = tmp_path / "prompt"
    get_peft_model(AutoModelForCausalLM.from_pretrained(varied_dir),
                   PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)).save_pretrained(prompt)
    with pytest.raises(TunelabError, match="PROMPT_TUNING adapter; the server serves LoRA adapters.*virtual tokens"):
        load_engine("transformers", str(varied_dir), {"p": prompt}, device="cpu")
    with pytest.raises(TunelabError, match="whole fine-tuned model .* serve it as the base with --model"):
        load_engine("transformers", str(varied_dir), {"full": tiny_model_dir}, device="cpu")
    with pytest.raises(TunelabError, match="a name, not a path"):
        load_engine("transformers", str(varied_dir), {"../x": other}, device="cpu")


def test_adapter_with_another_training_template_is_said(varied_dir, tmp_path):
    ad = make_lora(varied_dir, tmp_path / "templ", 4)
    (ad / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    with pytest.warns(UserWarning, match=r"trained with chat template 'chatml'|trained with chat template"):
        eng = load_engine("transformers", str(varied_dir), {"t": ad}, device="cpu", dtype="float32")
    try:
        assert eng.notes and "not the base's" in eng.notes[0]
        assert eng.tokenizer.decode(eng.render_chat([{"role": "user", "content": "hello"}])) == "hello<|im_end|>"
    finally:
        eng.close()


def test_request_errors(engine):
    prompt = chat(engine, "hello")
    with pytest.raises(TunelabError, match="unknown model 'nope'; this server serves"):
        engine.submit(GenerationRequest("nope", prompt, 4))
    with pytest.raises(TunelabError, match="max_tokens must be at least 1"):
        engine.submit(GenerationRequest(engine.base_name, prompt, 0))
    with pytest.raises(TunelabError, match="the model's context is 256"):
        engine.submit(GenerationRequest(engine.base_name, prompt * 100, 4))
    # a completion that would run past the context stops there
    near = (prompt * 20)[:250]
    assert run(engine, near, 50)[2].completion_tokens <= 6


def test_unknown_and_missing_engines(varied_dir, monkeypatch):
    import importlib.util

    with pytest.raises(TunelabError, match="unknown engine 'tgi'; use one of transformers, llama.cpp, vllm"):
        load_engine("tgi", str(varied_dir), {})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("llama_cpp", "vllm") else real(n, *a))
    with pytest.raises(TunelabError, match="pip install llama-cpp-python"):
        load_engine("llama.cpp", str(varied_dir), {})
    with pytest.raises(TunelabError, match="pip install vllm"):
        load_engine("vllm", str(varied_dir), {})
    facts = {k: e.facts() for k, e in ENGINES.items()}
    assert facts["transformers"]["mixed_batches"] and not facts["llama.cpp"]["mixed_batches"]
    assert facts["vllm"]["needs"] == "a CUDA GPU"


class _FakeLlama:
    """Stands in for llama_cpp.Llama (not installed here), with the calls the engine makes: it replays a
    fixed token sequence, so the engine's own path (GGUF resolution, the GGUF's template and tokenizer, the
    worker thread, stop handling) is what is tested."""

    made: list[dict] = []
    reply: list[int] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.metadata = {"tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                                                    "{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"}
        _FakeLlama.made.append(kwargs)

    def token_eos(self) -> int:
        return 2

    def set_seed(self, seed: int) -> None:
        self.seed = seed

    def generate(self, tokens, **kwargs):
        assert kwargs["temp"] == 0.0 and kwargs["top_k"] == 0 and kwargs["reset"]
        yield from self.reply


def test_llamacpp_engine_path_with_a_stand_in_binding(tiny_model_dir, tiny_tokenizer, tmp_path, monkeypatch):
    import importlib.util
    import sys
    import types

    spec = importlib.util.spec_from_file_location("models_fixtures", Path(__file__).parents[1] / "models" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    gguf = fixtures.write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf", tiny_tokenizer.chat_template)
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=_FakeLlama))
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    _FakeLlama.made.clear()
    _FakeLlama.reply = tiny_tokenizer("Paris is the capital", add_special_tokens=False)["input_ids"] + [
        tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"), 5, 6]
    with pytest.raises(TunelabError, match="needs a LoRA adapter in GGUF format"):
        run = tmp_path / "run"  # a PEFT run directory, as the transformers engine takes
        run.mkdir()
        (run / "adapter_config.json").write_text("{}")
        load_engine("llama.cpp", str(gguf), {"a": run})
    eng = load_engine("llama.cpp", str(gguf), {})
    try:
        assert eng.kind == "llama.cpp" and eng.model_names() == ["tiny"] and eng.context_length() == 256
        assert _FakeLlama.made[-1] == {"model_path": str(gguf), "n_ctx": 256, "verbose": False}
        ids = eng.render_chat([{"role": "user", "content": "hello"}])
        # the GGUF's own template (jinja drops its final newline: how this one differs from the fixture's)
        assert tiny_tokenizer.decode(ids) == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant"
        text, _, last = eng.submit(GenerationRequest("tiny", ids, 20)).result()
        assert text == "Paris is the capital" and last.finish_reason == "stop"  # the end-of-turn token stopped it
        text, _, last = eng.submit(GenerationRequest("tiny", ids, 20, stop=[" the"])).result()
        assert text == "Paris is" and last.finish_reason == "stop"
    finally:
        eng.close()
