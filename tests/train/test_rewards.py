"""The grpo rewards on hand cases: each built-in, its option checks, the LLM judge through a loopback
server, user functions by import path and the errors naming a reward that fails."""

from __future__ import annotations

import json
import re
import typing

import openai_server
import pytest

from tunelab.config.grpo import BuiltinReward, RewardConfig
from tunelab.errors import TunelabError
from tunelab.train.rewards import REWARDS, Sample, build_rewards, score


def _scores(name: str, completions: list[str], reference: str | None = None, n_tokens: list[int] | None = None,
            **options) -> list[float]:
    (reward,) = build_rewards([RewardConfig(name=name, options=options)])
    samples = [Sample([{"role": "user", "content": "q"}], c, reference, (n_tokens or [len(c)] * len(completions))[i])
               for i, c in enumerate(completions)]
    return reward(samples)


def test_registry_matches_the_config_names():
    assert set(REWARDS) == set(typing.get_args(BuiltinReward))


def test_exact_match_and_rouge_l():
    assert _scores("exact_match", ["Paris.", "the paris", "Lyon"], "Paris") == [1.0, 1.0, 0.0]
    rouge = _scores("rougeL", ["the cat sat", "a dog ran", "the cat sat on the mat"], "the cat sat on the mat")
    assert rouge[2] == pytest.approx(1.0) and rouge[1] == 0.0
    assert rouge[0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # LCS 3: precision 1, recall 1/2


def test_regex_json_length_label():
    assert _scores("regex", ["yes, sure", "no", "Yes"], pattern="^yes") == [1.0, 0.0, 0.0]
    assert _scores("regex", ["yes", "yes!"], pattern="yes", mode="fullmatch") == [1.0, 0.0]
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"],
              "additionalProperties": False}
    assert _scores("json", ['{"n": 1}', "{n: 1}", '[1]'],) == [1.0, 0.0, 1.0]
    assert _scores("json", ['{"n": 1}', '{"n": -1}', '{"m": 1}', '{"n": 1, "x": 2}', '{"n": true}'],
                   schema=schema) == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert _scores("length", ["", "", "", ""], n_tokens=[10, 5, 15, 30], target=10) == [1.0, 0.5, 0.5, 0.0]
    assert _scores("label", [" Hardware\n", "hardware issue", "software"], "hardware") == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(("name", "options", "message"), [
    ("regex", {}, "reward regex: options.pattern is required"),
    ("regex", {"pattern": "("}, "reward regex: pattern '\\(' is not a regular expression"),
    ("length", {"target": 0}, "reward length: target must be a whole number"),
    ("label", {"strict": True}, "reward label: unknown option\\(s\\) strict"),
    ("json", {"schema": {"type": "object", "oneOf": []}}, "reward json: schema uses oneOf"),
    ("judge", {}, "reward judge: options.spec is required"),
])
def test_builtin_option_errors(name, options, message):
    with pytest.raises(TunelabError, match=message):
        build_rewards([RewardConfig(name=name, options=options)])


def test_reference_needed_but_missing():
    with pytest.raises(TunelabError, match="reward exact_match compares with a reference answer, but 1 prompt"):
        _scores("exact_match", ["x"], None)


def test_weights_sum_and_repeated_names_are_told_apart():
    rewards = build_rewards([RewardConfig(name="regex", options={"pattern": "a"}),
                             RewardConfig(name="regex", options={"pattern": "b"}, weight=2.0)])
    samples = [Sample([], text, None, 1) for text in ("a", "b", "ab", "c")]
    totals, per = score(rewards, samples)
    assert list(per) == ["regex#0", "regex#1"]
    assert totals == [1.0, 2.0, 3.0, 0.0]


def test_user_function_by_import_path():
    import grpo_rewards

    grpo_rewards.CALLS.clear()
    (reward,) = build_rewards([RewardConfig(function="grpo_rewards:letter_share", options={"letter": "a"})])
    prompt = [{"role": "user", "content": "say a"}]
    assert reward([Sample(prompt, "aaab", "ref", 2)]) == [0.75]
    assert grpo_rewards.CALLS == [{"completion": "aaab", "prompt": prompt, "reference": "ref", "letter": "a"}]
    (np_reward,) = build_rewards([RewardConfig(function="grpo_rewards:numpy_score")])
    assert np_reward([Sample(prompt, "abcde", None, 2)]) == [pytest.approx(0.5)]  # numpy scalars are numbers
    (bad,) = build_rewards([RewardConfig(function="grpo_rewards:broken")])
    with pytest.raises(TunelabError, match="reward grpo_rewards:broken raised ValueError: no score for you"):
        bad([Sample(prompt, "x", None, 1)])


def test_judge_reward_through_a_backend():
    server = openai_server.OpenAIServer().start()
    try:
        def respond(body):
            answer = re.search(r"ANSWER:\n(.*?)\n\n", body["messages"][-1]["content"], re.DOTALL).group(1).strip()
            return json.dumps({"reason": "graded", "score": {"Paris.": 5, "Lyon.": 1}.get(answer, 3)})

        server.responder = respond
        values = _scores("judge", ["Paris.", "Lyon.", "Maybe Paris."], "Paris is the capital.",
                         spec=f"openai:judge@{server.base_url}", cache=False, api_key_env="NO_SUCH_KEY_ENV")
    finally:
        server.stop()
    assert values == [1.0, 0.0, 0.5]


def test_the_code_of_a_user_reward_is_in_the_training_key(tmp_path, monkeypatch):
    """Editing a reward function makes `tunelab run` train again instead of reusing a model trained on the
    old reward (and a checkpoint is not resumed across the edit)."""
    from tunelab.config import ExperimentConfig
    from tunelab.pipeline import train_key
    from tunelab.train.rewards import reward_code_digest

    module = tmp_path / "house_rewards.py"
    module.write_text("def polite(completion, **_):\n    return float('please' in completion)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = ExperimentConfig.model_validate({"name": "x", "train": {
        "objective": "grpo", "rewards": [{"name": "label"}, {"function": "house_rewards:polite"}]}})
    digest, key = reward_code_digest(config.train.rewards), train_key(config, "data")
    assert digest is not None and reward_code_digest([RewardConfig(name="label")]) is None
    module.write_text("def polite(completion, **_):\n    return float('thanks' in completion)\n")
    assert reward_code_digest(config.train.rewards) != digest
    assert train_key(config, "data") != key
