"""Config of the grpo objective: `train.grpo` (sampling and the policy-gradient settings) and
`train.rewards` (what a sampled completion is scored by). tunelab.train.grpo and tunelab.train.rewards
give these fields their meaning; this module only fixes their shape and bounds."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from .base import Section

# The names of tunelab.train.rewards.REWARDS, whose entries hold each reward's facts (config cannot import
# train; tests/train/test_rewards.py checks the two are equal).
BuiltinReward = Literal["exact_match", "rougeL", "regex", "json", "length", "label", "judge"]

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class GrpoConfig(Section):
    """Group relative policy optimisation (DeepSeekMath): each prompt is answered group_size times by the
    model being trained, each answer's advantage is its reward against its group's mean (in group
    standard deviations), and the policy is moved by the clipped surrogate objective with a KL penalty to
    the reference model. Defaults follow TRL's GRPOTrainer where it has one, so results compare."""

    group_size: int = Field(8, ge=2, description="Completions sampled per prompt. 8: the group mean is the "
                            "baseline, so fewer makes it noisy; more multiplies generation time (which "
                            "dominates a step). TRL's num_generations default is 8 too.")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference model. 0.04: DeepSeekMath's "
                        "value (TRL's default until 0.19); enough to stop the policy drifting into "
                        "reward-hacking gibberish, small enough not to cancel a reward of spread ~0.1. "
                        "0 skips the reference forward pass entirely.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clipping range of the probability ratio (PPO's "
                           "0.2): with several iterations per batch no update moves a token's probability "
                           "by more than 20% from the policy that sampled it.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature. 1.0: the model's own "
                               "distribution, so the groups explore and the loss's log-probabilities are "
                               "those of the sampler (lower makes groups agree and advantages vanish).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling. 1.0 (off): truncating the "
                         "distribution makes the sampler differ from the policy the loss differentiates.")
    max_new_tokens: int = Field(64, gt=0, description="Completion length cap. 64: enough for a label, a "
                                "short answer or a JSON object; generation time grows with it.")
    iterations: int = Field(1, ge=1, description="Optimizer updates per batch of samples (GRPO's mu). 1: "
                            "on-policy (the ratio is 1 and clipping is inactive), the cheapest; more reuses "
                            "each costly batch of samples, with clipping keeping the updates close.")


class RewardConfig(Section):
    """One reward: a built-in by `name` with its `options`, or the user's own function by `function`
    ("package.module:function", imported and run in the training process: it runs your code with your
    permissions). The rewards of a completion are summed with their weights."""

    name: BuiltinReward | None = Field(None, description="A built-in reward (tunelab.train.rewards).")
    function: str | None = Field(None, description="A user function as 'package.module:function', called "
                                 "as fn(completion, prompt=messages, reference=str|None, **options) and "
                                 "returning a number. It runs your own code.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the reward "
                                    "(a built-in checks its own; a function gets them as keywords).")
    weight: float = Field(1.0, description="Multiplier of this reward in the sum.")

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if (self.name is None) == (self.function is None):
            raise ValueError("give either name (a built-in reward) or function (package.module:function)")
        if self.function is not None and not _IMPORT_PATH.match(self.function):
            raise ValueError(f"function {self.function!r} is not an import path 'package.module:function'")
        return self

    @property
    def label(self) -> str:
        """How the reward is named in logs: the built-in's name or the function's import path."""
        return self.name or str(self.function)
