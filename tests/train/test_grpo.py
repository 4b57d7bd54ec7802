"""The grpo objective on the tiny model: a verifiable reward rises, the arithmetic of advantages and
the loss on a hand-computed batch, the reference is the policy as the stage starts, prompts from chat and label
records, per-step logging, exact resume and a grpo stage after an sft stage."""

from __future__ import annotations

import json
import math

import grpo_rewards
import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import ExperimentConfig
from tunelab.data.records import Record
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import read_jsonl
from tunelab.train import run
from tunelab.train.grpo import build_grpo, group_advantages, token_loss

from .conftest import FACTS

LETTER = [{"function": "grpo_rewards:letter_share", "options": {"letter": "e"}}]
GRPO = {"objective": "grpo", "max_steps": 2, "batch_size": 2, "lr": 1e-2,
        "grpo": {"group_size": 4, "max_new_tokens": 8}, "rewards": LETTER}


def _steps(run_dir) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "train_log.jsonl") if r.get("event") is None]


def _sampled_reward(model, tokenizer, letter: str = "e") -> float:
    """Mean letter share of 8 seeded samples per training prompt."""
    from tunelab.models.generate import GenerationConfig, Generator

    prompts = [[{"role": "user", "content": q}] for q, _ in FACTS]
    outs = Generator(model, tokenizer, threads=1).generate(
        [p for p in prompts for _ in range(8)], GenerationConfig(max_new_tokens=8, temperature=1.0, seed=123,
                                                                 batch_size=64))
    return sum(o.text.count(letter) / max(1, len(o.text)) for o in outs) / len(outs)


def test_grpo_raises_a_verifiable_reward(make_config, tiny_tokenizer):
    # full fine-tuning: on a random 2-layer model with 32 hidden units the reward moves within 15 steps
    # this way; beta > 0 so full fine-tuning's frozen reference copy is exercised too
    cfg = make_config("raise", method={"name": "full"},
                      train={**GRPO, "max_steps": 15, "batch_size": 4, "grpo": {"group_size": 4, "max_new_tokens": 8}})
    before = _sampled_reward(run(make_config("base", method={"name": "full"},
                                             train={**GRPO, "max_steps": 1, "lr": 1e-9}), progress=False).model,
                             tiny_tokenizer)
    result = run(cfg, progress=False)
    after = _sampled_reward(result.model, tiny_tokenizer)
    assert result.status == "completed"
    assert after > before + 0.04, (before, after)  # measured: 0.066 -> 0.15
    rows = _steps(result.run_dir)
    first, last = sum(r["reward_mean"] for r in rows[:4]) / 4, sum(r["reward_mean"] for r in rows[-4:]) / 4
    assert last > first
    assert max(r["kl"] for r in rows) > 0  # the policy left its reference


def test_step_log_and_custom_reward_calls(make_config):
    grpo_rewards.CALLS.clear()
    rewards = [*LETTER, {"name": "length", "options": {"target": 4}, "weight": 0.5}]
    result = run(make_config("log", train={**GRPO, "rewards": rewards}), progress=False)
    rows = _steps(result.run_dir)
    assert len(rows) == 2
    for key in ("reward_mean", "reward_std", "reward/grpo_rewards:letter_share_mean", "reward/length_mean",
                "reward/length_std", "kl", "completion_tokens", "prompts_per_s", "generate_s"):
        assert key in rows[0], key
    row = rows[0]
    # the total is the weighted sum of the per-function means
    assert row["reward_mean"] == pytest.approx(row["reward/grpo_rewards:letter_share_mean"]
                                               + 0.5 * row["reward/length_mean"])
    # the user's function was called once per completion (2 steps x 2 prompts x 4), with its options
    assert len(grpo_rewards.CALLS) == 16
    call = grpo_rewards.CALLS[0]
    assert call["letter"] == "e" and call["prompt"][-1]["role"] == "user"
    assert call["reference"] in {a for _, a in FACTS}
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["objective"] == "grpo" and summary["artifact"]["kind"] == "adapter"


@pytest.mark.parametrize(("function", "message"), [
    ("grpo_rewards:broken", "reward grpo_rewards:broken raised ValueError: no score for you"),
    ("grpo_rewards:not_a_number", "reward grpo_rewards:not_a_number returned 'high'"),
    ("grpo_rewards:missing", "reward function grpo_rewards:missing: module 'grpo_rewards' has no function"),
    ("no_such_module_xyz:fn", "reward function no_such_module_xyz:fn: cannot import module 'no_such_module_xyz'"),
])
def test_failing_reward_names_it(make_config, function, message):
    with pytest.raises(TunelabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(make_config("bad", train={**GRPO, "rewards": [{"function": function}]}), progress=False)


def test_config_refuses_grpo_without_rewards_and_bad_paths(make_config, tmp_path):
    from pydantic import ValidationError

    from tunelab.config import load_config

    with pytest.raises(ValidationError, match="needs train.rewards"):
        make_config("none", train={**GRPO, "rewards": []})
    with pytest.raises(ValidationError, match="either name"):
        make_config("both", train={**GRPO, "rewards": [{"name": "label", "function": "a:b"}]})
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ntrain:\n  objective: grpo\n  rewards:\n    - function: grpo_rewards.letter_share\n")
    with pytest.raises(ConfigError, match=r"train.rewards.0.*line 5.*not an import path"):
        load_config(path)


def test_advantages_and_loss_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 3)
    # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: all equal, advantage 0
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    expected = [(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)

    logp = torch.log(torch.tensor([0.5, 0.2, 0.9]))
    old = torch.log(torch.tensor([0.4, 0.2, 0.5]))
    ref = torch.log(torch.tensor([0.5, 0.1, 0.9]))
    a = torch.tensor([1.0, -1.0, 2.0])
    loss, kl, clipped = token_loss(logp, old, ref, a, epsilon=0.2, beta=0.1)
    # ratios 1.25 (clipped to 1.2 with A > 0), 1.0, 1.8 (clipped to 1.2)
    surrogate = [-min(1.25 * 1, 1.2 * 1), -min(1.0 * -1, 1.0 * -1), -min(1.8 * 2, 1.2 * 2)]
    k3 = [0.0, 0.5 - math.log(0.5) - 1, 0.0]  # exp(ref - logp) - (ref - logp) - 1
    assert loss.tolist() == pytest.approx([s + 0.1 * k for s, k in zip(surrogate, k3, strict=True)], abs=1e-6)
    assert kl.tolist() == pytest.approx(k3, abs=1e-6)
    assert clipped.tolist() == [True, False, True]


def _spy_reference(monkeypatch) -> list:
    """(reference, policy, adapter-off log-probs, the weights kept aside) at every reference pass."""
    from tunelab.train import grpo

    seen = []
    original = grpo.GrpoStep._reference

    def spy(self, setup, batch):
        ref = original(self, setup, batch)
        with torch.no_grad():
            policy = grpo.token_logprobs(setup.head, batch)
            with setup.model.disable_adapter():
                off = grpo.token_logprobs(setup.head, batch)
        seen.append((ref, policy, off, self._start))
        return ref

    monkeypatch.setattr(grpo.GrpoStep, "_reference", spy)
    return seen


def test_reference_of_a_fresh_adapter_is_the_base_model(make_config, monkeypatch):
    """With a fresh LoRA adapter the KL is measured against the base model's log-probabilities, and only
    the adapter's weights are kept aside (no second model)."""
    seen = _spy_reference(monkeypatch)
    run(make_config("ref", train={**GRPO, "max_steps": 3, "lr": 5e-2}), progress=False)
    ref, policy, off, kept = seen[-1]
    assert kept and all("lora_" in name for name in kept)  # the adapter only
    assert torch.equal(ref, off)
    assert not torch.allclose(ref, policy)  # after two updates the adapter matters


def test_reference_after_an_sft_stage_is_the_sft_result(make_config, monkeypatch):
    """A grpo stage after sft is held near what sft taught (the policy as the stage starts), not pulled
    back to the base model."""
    seen = _spy_reference(monkeypatch)
    cfg = make_config("anchored", train={"max_steps": 2, "lr": 5e-2}, stages=[
        {"name": "sft", "train": {"objective": "sft"}},
        {"name": "rl", "train": {k: v for k, v in GRPO.items() if k != "max_steps"}},
    ])
    run(cfg, progress=False)
    ref, policy, off, _ = seen[0]  # the rl stage's first step, before its first update
    assert torch.allclose(ref, policy, atol=1e-6)
    assert not torch.allclose(ref, off)  # sft moved the adapter: the base is not the reference
    ref_last, policy_last, _, _ = seen[-1]
    assert not torch.allclose(ref_last, policy_last)  # the policy moved on, the reference stayed


def test_prompts_from_chat_and_label_records(tiny_tokenizer):
    records = [
        Record("chat", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]),
        Record("chat", messages=[{"role": "user", "content": "Open question"}]),
        Record("label", text="My laptop will not boot", label="hardware"),
    ]
    examples, stats = build_grpo(records, tiny_tokenizer, 128)
    assert [e.reference for e in examples] == ["Hello.", None, "hardware"]
    assert examples[2].messages == [{"role": "user", "content": "My laptop will not boot"}]
    assert stats["prompts"] == 3 and stats["with_reference"] == 2
    rendered = tiny_tokenizer.apply_chat_template(examples[0].messages, add_generation_prompt=True, tokenize=False)
    assert tiny_tokenizer.decode(examples[0].input_ids) == rendered
    with pytest.raises(TunelabError, match=r"data.jsonl:7: the grpo objective .* a text record"):
        build_grpo([Record("text", text="just text", meta={"file": "data.jsonl", "line": 7})], tiny_tokenizer, 128)


def test_resume_is_exact(make_config):
    whole = run(make_config("whole", train={**GRPO, "max_steps": 4}), progress=False)
    cfg = make_config("parts", train={**GRPO, "max_steps": 4, "save_every": 2})
    stops = iter([False, True])  # stop after step 2 (checked after each step)
    first = run(cfg, progress=False, stop=lambda: next(stops, False))
    assert first.status == "interrupted"
    resumed = run(cfg, resume=True, progress=False)
    assert resumed.status == "completed"
    a, b = (load_file(r.run_dir / "adapter_model.safetensors") for r in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["reward_mean"] for r in _steps(whole.run_dir)] == [r["reward_mean"] for r in _steps(resumed.run_dir)]


def test_grpo_stage_after_sft_stage(make_config):
    cfg = make_config("staged", train={"max_steps": 2}, stages=[
        {"name": "sft", "train": {"objective": "sft"}},
        {"name": "rl", "train": {k: v for k, v in GRPO.items() if k != "max_steps"}},
    ])
    result = run(cfg, progress=False)
    assert result.status == "completed"
    lineage = json.loads((result.run_dir / "lineage.json").read_text())
    assert [s["objective"] for s in lineage["stages"]] == ["sft", "grpo"]
    assert lineage["stages"][1]["start"]["kind"] == "continue"
    rows = [r for r in read_jsonl(result.run_dir / "train_log.jsonl") if r.get("stage") == "rl" and "reward_mean" in r]
    assert len(rows) == 2


def test_dry_run_plans_grpo(make_config):
    result = run(make_config("plan", train=GRPO), dry_run=True, progress=False)
    assert result.status == "planned" and result.plan["objective"] == "grpo"
    assert "measured_tokens_per_s" not in result.plan


def test_config_sections_round_trip():
    cfg = ExperimentConfig.model_validate({"name": "x", "train": {"objective": "grpo", "rewards": [
        {"name": "regex", "options": {"pattern": "^yes"}}], "grpo": {"group_size": 2}}})
    assert cfg.train.grpo.group_size == 2 and cfg.train.grpo.beta == 0.04
    assert cfg.train.rewards[0].label == "regex"
