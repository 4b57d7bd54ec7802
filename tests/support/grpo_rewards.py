"""Reward functions the grpo tests name by import path, as a user's config would ("grpo_rewards:...")."""

from __future__ import annotations

CALLS: list[dict] = []


def letter_share(completion: str, *, prompt, reference, letter: str = "e") -> float:
    """The share of the completion's characters that are `letter`: dense enough for a tiny random model
    to climb in a few steps."""
    CALLS.append({"completion": completion, "prompt": prompt, "reference": reference, "letter": letter})
    return completion.count(letter) / max(1, len(completion))


def broken(completion: str, **_kwargs) -> float:
    raise ValueError("no score for you")


def not_a_number(completion: str, **_kwargs):
    return "high"


def numpy_score(completion: str, **_kwargs):
    """A numpy scalar, as scoring code built on numpy returns: a number like any other."""
    import numpy

    return numpy.float32(len(completion) / 10)
