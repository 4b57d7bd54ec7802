"""Every method on the tiny model: what should train does, what should stay frozen does, the loss falls
on 8 memorisable examples within 30 steps, and the result reloads."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.train.methods import METHODS, linear_module_names, resolve_targets
from tunelab.train.run import build_model, run

# (method, lr, trainable-name markers, required relative loss drop in 30 steps). Adapters that only
# rescale or prepend (ia3, prompt, prefix) move a random 2-layer model less than low-rank updates do.
CASES = [
    ("full", 3e-3, None, 0.8),
    ("lora", 1e-2, ("lora_A", "lora_B"), 0.5),
    ("dora", 1e-2, ("lora_A", "lora_B", "lora_magnitude_vector"), 0.5),
    ("qlora", 1e-2, ("lora_A", "lora_B"), 0.5),
    ("ia3", 3e-1, ("ia3_l",), 0.15),
    ("prompt", 3e-1, ("prompt_encoder",), 0.04),
    ("prefix", 3e-1, ("prompt_encoder",), 0.15),
]


def _weights(model) -> dict[str, tuple[torch.Tensor, bool]]:
    return {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}


def test_every_method_has_a_case():
    assert {c[0] for c in CASES} == set(METHODS)


@pytest.mark.parametrize(("method", "lr", "markers", "drop"), CASES, ids=[c[0] for c in CASES])
def test_method_trains_what_it_should(method, lr, markers, drop, make_config):
    config = make_config(
        f"m-{method}",
        method={"name": method, "num_virtual_tokens": 8},
        train={"max_steps": 30, "batch_size": 8, "lr": lr, "save_every": 1000},
    )
    initial, _ = build_model(config)
    before = _weights(initial)
    result = run(config, progress=False)
    assert result.status == "completed"
    after = _weights(result.model)
    assert before.keys() == after.keys()

    trainable = [n for n, (_, grad) in after.items() if grad]
    assert trainable and result.summary["trainable_params"] == sum(after[n][0].numel() for n in trainable)
    for name, (value, grad) in after.items():
        changed = not torch.equal(value, before[name][0])
        if grad:
            assert changed, f"{method}: trainable {name} did not change"
            if markers:
                assert any(m in name for m in markers), f"{method}: unexpected trainable {name}"
        else:
            assert not changed, f"{method}: frozen {name} changed"
    if method == "full":
        assert len(trainable) == len(after)

    losses = [r["loss"] for r in read_jsonl(result.run_dir / "train_log.jsonl") if "loss" in r]
    assert len(losses) == 30
    assert losses[-1] < losses[0] * (1 - drop), f"{method}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_lora_adapter_reloads_with_peft(make_config, train_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config("reload", train={"max_steps": 3, "batch_size": 8})
    result = run(config, progress=False)
    assert (result.run_dir / "adapter_config.json").is_file()
    assert (result.run_dir / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(train_model_dir)
    expected_targets = linear_module_names(base)
    loaded = PeftModel.from_pretrained(base, result.run_dir)
    trained = dict(result.model.named_parameters())
    for name, p in loaded.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, trained[name])
    assert result.summary["target_modules"] == expected_targets == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"
    ]


def test_full_model_reloads_as_safetensors(make_config):
    from transformers import AutoModelForCausalLM

    config = make_config("full-reload", method={"name": "full"}, train={"max_steps": 2, "batch_size": 8, "lr": 1e-3})
    result = run(config, progress=False)
    assert list(result.run_dir.glob("*.safetensors"))
    loaded = AutoModelForCausalLM.from_pretrained(result.run_dir)
    trained = dict(result.model.named_parameters())
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p, trained[name])
    assert loaded.generation_config.eos_token_id is not None


def test_target_modules_are_checked(make_config):
    config = make_config("targets", method={"name": "lora", "target_modules": ["q_proj", "nope_proj"]})
    model, _ = build_model(make_config("targets-ok"))
    with pytest.raises(TunelabError, match="nope_proj not found"):
        resolve_targets(model.get_base_model(), config.method)


def test_embedding_lr_gets_its_own_group(make_config):
    from tunelab.train.methods import build_optimizer

    config = make_config("emb", method={"name": "full", "embedding_lr": 1e-5})
    model, _ = build_model(config)
    optimizer = build_optimizer(model, 1e-3, 0.1, 1e-5)
    embedding = model.get_input_embeddings().weight
    groups = [g for g in optimizer.param_groups if any(p is embedding for p in g["params"])]
    assert len(groups) == 1 and groups[0]["lr"] == 1e-5
    norms = [g for g in optimizer.param_groups if any(p.ndim == 1 for p in g["params"])]
    assert all(g["weight_decay"] == 0.0 for g in norms)


def test_the_config_accepts_exactly_the_registered_methods():
    import typing

    from tunelab.config import MethodConfig

    assert set(typing.get_args(MethodConfig.model_fields["name"].annotation)) == set(METHODS)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_states_its_facts(name):
    from tunelab.config import MethodConfig
    from tunelab.models.loading import DTYPES
    from tunelab.models.memory import MemoryModel

    m = METHODS[name]
    assert m.name == name and m.summary and callable(m.apply)
    assert set(m.shape_keys) <= set(MethodConfig.model_fields) - {"name"}
    if m.lora_family:
        assert m.adapter and {"r", "alpha", "target_modules"} <= set(m.shape_keys)
    if not m.adapter:
        assert m.shape_keys == () and m.mergeable  # a whole model: nothing to continue or merge
    assert m.auto_dtype is None or m.auto_dtype in DTYPES
    assert m.memory is None or isinstance(m.memory, MemoryModel)
    if m.quantized and m.memory is not None:
        assert m.memory.base == "nf4"
    lr, reason = m.suggest_lr(135_000_000)
    assert 0 < lr < 1 and reason


def test_a_new_method_is_one_registry_entry(monkeypatch):
    """Every stage reads the entry: a method registered under a new name is planned, continued across
    stages and estimated like the one it copies, with nothing else edited."""
    import dataclasses

    from tunelab.config import MethodConfig
    from tunelab.train.plan import memory_estimates, suggest
    from tunelab.train.stages import same_adapter

    monkeypatch.setitem(METHODS, "lora2", dataclasses.replace(METHODS["lora"], name="lora2"))
    a, b = (MethodConfig.model_construct(name="lora2", r=r) for r in (8, 16))
    assert same_adapter(a, a.model_copy(update={"dropout": 0.3})) and not same_adapter(a, b)
    assert suggest("lora2", 135_000_000, 100, 1000) == suggest("lora", 135_000_000, 100, 1000)
    shape = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
             "vocab_size": 300}
    estimates = memory_estimates(shape, 200_000, 64, 4, 8, "float32")
    assert estimates["lora2"]["total_gib"] == estimates["lora"]["total_gib"]
