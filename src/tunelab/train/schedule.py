"""Learning-rate schedules: linear warmup, then cosine or linear decay to zero, or constant.

A pure function of the step, wrapped in LambdaLR so its state (the step) checkpoints with the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("cosine", "linear", "constant")


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio) if warmup_ratio > 0 else 0


def lr_factor(name: str, total_steps: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the peak lr at optimizer step `step` (0-based: the lr used by step step+1)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if name == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    factor = lr_factor(name, total_steps, warmup_steps(total_steps, warmup_ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
