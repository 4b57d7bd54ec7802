"""Multi-task mixtures: several datasets, each a named task with a sampling weight, in one training run.

    mixture:
      - {task: qa, data: qa.jsonl, weight: 3}
      - {task: summaries, data: [sum1.jsonl, sum2.csv], weight: 1}

Each task is prepared on its own (`<run_dir>/data/<task>/`, with the experiment's `data` options: its
own cleaning, dedup and validation split), rendered with the objective, and its examples tagged with the
task name, so validation loss is reported per task (`val_loss/<task>`) next to the overall token mean.

How weights become an epoch (deterministic given train.seed; a pure function of the epoch number, so a
resumed run sees exactly the examples an uninterrupted one would):
- task t's probability is p_t = weight_t / sum of weights (the weights as given: no temperature);
- an epoch has N = the total number of training examples over all tasks, and holds exactly
  round(N * p_t) examples of task t (largest-remainder rounding, so the counts add up to N);
- those examples are taken from a cycle of shuffled passes over the task's examples that continues
  from epoch to epoch: a task is sampled *without* replacement until each of its examples has been seen,
  then reshuffled and cycled again (an upweighted small task repeats, a downweighted large one shows
  different examples in successive epochs);
- the epoch's examples are shuffled together and cut into optimizer steps as usual.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig, TaskConfig
from ..errors import TunelabError
from .batching import Example, steps_from_order


@dataclass
class TaskData:
    name: str
    weight: float
    probability: float
    train: list[int]  # indices into MixtureData.train
    n_val: int
    dataset_hash: str
    stats: dict[str, Any]


@dataclass
class MixtureData:
    """The pooled, task-tagged examples of every task and how an epoch samples them."""

    train: list[Example]
    val: list[Example]
    tasks: list[TaskData]
    seed: int
    dataset_hash: str
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def epoch_size(self) -> int:
        return len(self.train)

    def quotas(self) -> list[int]:
        return quotas([t.probability for t in self.tasks], self.epoch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices (into train) of the examples of one epoch, shuffled; a pure function of (seed, epoch)."""
        picked: list[np.ndarray] = []
        for k, (task, quota) in enumerate(zip(self.tasks, self.quotas(), strict=True)):
            picked.append(cycle_take(task.train, start=epoch * quota, count=quota, seed=self.seed, stream=k))
        order = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch, 1])
        return order[rng.permutation(len(order))]

    def epoch_steps(self, epoch: int, step_size: int, bucket: bool) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch, 2])
        lengths = [len(e) for e in self.train]
        return steps_from_order(self.epoch_order(epoch), lengths, step_size, rng, bucket=bucket)

    def summary(self) -> dict[str, Any]:
        return {
            "sampling": "per epoch, round(N * weight / sum of weights) examples of each task (N = all tasks' "
                        "training examples), each task cycled without replacement, reshuffled per pass",
            "epoch_size": self.epoch_size,
            "dataset_hash": self.dataset_hash,
            "tasks": [
                {"task": t.name, "weight": t.weight, "probability": round(t.probability, 6),
                 "train_examples": len(t.train), "val_examples": t.n_val, "per_epoch": q,
                 "dataset_hash": t.dataset_hash}
                for t, q in zip(self.tasks, self.quotas(), strict=True)
            ],
        }


def quotas(probabilities: list[float], total: int) -> list[int]:
    """Largest-remainder rounding of total * p: integers that add up to total."""
    raw = [p * total for p in probabilities]
    counts = [int(np.floor(r)) for r in raw]
    leftover = total - sum(counts)
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[:leftover]:
        counts[i] += 1
    return counts


def cycle_take(items: list[int], *, start: int, count: int, seed: int, stream: int) -> np.ndarray:
    """Positions start..start+count of the endless sequence pass_0, pass_1, ... where pass_k is a shuffle of
    items seeded by (seed, stream, k): without replacement inside a pass, so every item is seen once per pass."""
    n = len(items)
    if count == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    base = np.asarray(items, dtype=np.int64)
    out: list[np.ndarray] = []
    position = start
    while position < start + count:
        k, offset = divmod(position, n)
        perm = np.random.default_rng([seed, stream, k, 3]).permutation(n)
        take = min(n - offset, start + count - position)
        out.append(base[perm[offset : offset + take]])
        position += take
    return np.concatenate(out)


def _check_inputs(task: TaskConfig) -> None:
    for path in task.data:
        if not Path(path).exists():
            raise TunelabError(f"mixture task '{task.task}': data file {path} not found")


def build_mixture(tasks: list[TaskConfig], data: DataConfig, out_dir: Path, objective, tokenizer, seed: int,
                  prepare) -> tuple[MixtureData, dict[str, Any], dict[str, Any] | None]:
    """Prepare and render every task; returns (mixture, train stats, validation stats) where the stats
    have the objective's shape (summed over tasks) plus a per-task breakdown.

    `prepare(data_config, out_dir) -> manifest` prepares one task's dataset (reused while unchanged)."""
    from ..data.prepare import load_split

    for task in tasks:
        _check_inputs(task)
    total_weight = sum(t.weight for t in tasks)
    pooled_train: list[Example] = []
    pooled_val: list[Example] = []
    task_data: list[TaskData] = []
    manifests: dict[str, dict[str, Any]] = {}
    train_stats: list[dict[str, Any]] = []
    val_stats: list[dict[str, Any]] = []
    for task in tasks:
        task_dir = out_dir / task.task
        try:
            manifest = prepare(data.model_copy(update={"train": list(task.data)}), task_dir)
        except TunelabError as exc:
            raise TunelabError(f"mixture task '{task.task}': {exc}") from None
        manifests[task.task] = manifest
        records = load_split(task_dir, "train")
        examples, stats = objective.build(records, tokenizer, data.max_length)
        if not examples:
            raise TunelabError(f"mixture task '{task.task}': no training example has a token in the loss after "
                               "rendering; check data.max_length and the records")
        val_records = load_split(task_dir, "validation") if (task_dir / "validation.jsonl").is_file() else []
        val, vstats = objective.build(val_records, tokenizer, data.max_length) if val_records else ([], None)
        for example in (*examples, *val):
            example.task = task.task
        first = len(pooled_train)
        pooled_train += examples
        pooled_val += val
        task_data.append(TaskData(task.task, task.weight, task.weight / total_weight,
                                  list(range(first, len(pooled_train))), len(val), manifest["dataset_hash"],
                                  stats))
        train_stats.append({"task": task.task, **stats})
        if vstats is not None:
            val_stats.append({"task": task.task, **vstats})
    digest = _digest([(t.name, t.weight, t.dataset_hash) for t in task_data])
    mixture = MixtureData(pooled_train, pooled_val, task_data, seed, digest, manifests)
    return mixture, _combine(train_stats), _combine(val_stats) if val_stats else None


def _digest(identity: list[tuple[str, float, str]]) -> str:
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()


def mixture_hash(tasks: list[TaskConfig], data: DataConfig, out_dir: Path, prepare) -> str:
    """The mixture's dataset hash (tasks, weights and each task's prepared-data hash) without rendering."""
    for task in tasks:
        _check_inputs(task)
    hashes = [prepare(data.model_copy(update={"train": list(t.data)}), out_dir / t.task)["dataset_hash"]
              for t in tasks]
    return _digest([(t.task, t.weight, h) for t, h in zip(tasks, hashes, strict=True)])


def _combine(per_task: list[dict[str, Any]]) -> dict[str, Any]:
    """The objective's stats summed over tasks, with the per-task ones kept under `tasks`."""
    out: dict[str, Any] = {}
    for key in ("examples", "tokens", "loss_tokens", "truncated", "dropped_no_loss_tokens"):
        out[key] = sum(s.get(key, 0) for s in per_task)
    out["max_example_tokens"] = max((s.get("max_example_tokens", 0) for s in per_task), default=0)
    out["warnings"] = [f"task {s['task']}: {w}" for s in per_task for w in s.get("warnings", [])]
    out["tasks"] = {s["task"]: {k: v for k, v in s.items() if k not in ("task", "warnings")} for s in per_task}
    return out
