"""Multi-task mixtures: epoch composition follows the weights exactly and deterministically, every task
is cycled without replacement, validation loss is reported per task, and bad mixtures are clear errors."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tunelab.config import load_config
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import read_jsonl
from tunelab.train import run
from tunelab.train.batching import Example
from tunelab.train.mixture import MixtureData, TaskData, cycle_take, quotas

OTHER = [(f"What is {a} plus {b}?", f"{a + b}.") for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1)]]


def _mixture(sizes: dict[str, int], weights: dict[str, float], seed: int = 3) -> MixtureData:
    train: list[Example] = []
    tasks = []
    total = sum(weights.values())
    for name, n in sizes.items():
        first = len(train)
        train += [Example([1] * (3 + i % 5), [1] * (3 + i % 5), 3, name) for i in range(n)]
        tasks.append(TaskData(name, weights[name], weights[name] / total, list(range(first, len(train))), 0, "h", {}))
    return MixtureData(train, [], tasks, seed, "digest")


def test_epochs_follow_the_weights_and_cycle_each_task():
    mix = _mixture({"big": 100, "small": 20}, {"big": 1.0, "small": 1.0})
    assert mix.epoch_size == 120 and mix.quotas() == [60, 60]
    seen_small: Counter = Counter()
    for epoch in range(3):
        order = mix.epoch_order(epoch)
        tasks = Counter(mix.train[i].task for i in order)
        assert tasks == {"big": 60, "small": 60}
        small = [int(i) for i in order if mix.train[i].task == "small"]
        counts = Counter(small)
        assert max(counts.values()) - min(counts.values()) <= 1  # 60 of 20: three whole passes
        seen_small.update(small)
        if epoch == 0:
            big = [int(i) for i in order if mix.train[i].task == "big"]
            assert len(set(big)) == 60  # 60 of 100, without replacement
    assert set(seen_small) == set(range(100, 120))
    # the big task continues its pass in the next epoch: the first 40 it takes there complete the pass
    first, second = ([int(i) for i in mix.epoch_order(e) if mix.train[i].task == "big"] for e in (0, 1))
    assert len(set(first) | set(cycle_take(list(range(100)), start=60, count=40, seed=3, stream=0))) == 100
    assert sorted(set(first) | set(second)) == list(range(100))
    np.testing.assert_array_equal(mix.epoch_order(1), _mixture({"big": 100, "small": 20},
                                                               {"big": 1.0, "small": 1.0}).epoch_order(1))
    assert not np.array_equal(mix.epoch_order(1), mix.epoch_order(2))


def test_sampled_proportions_match_the_weights_within_tolerance():
    mix = _mixture({"a": 50, "b": 30, "c": 7}, {"a": 5.0, "b": 3.0, "c": 2.0})
    steps = mix.epoch_steps(0, step_size=8, bucket=True)
    picked = Counter(mix.train[i].task for step in steps for i in step)
    total = sum(picked.values())
    assert total == 87
    for task, p in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(picked[task] / total - p) < 0.01
    # over a stream of steps (not one epoch) the proportions hold too
    stream = Counter(mix.train[i].task for e in range(5) for i in mix.epoch_order(e))
    assert abs(stream["c"] / sum(stream.values()) - 0.2) < 0.01


def test_quota_and_cycle_helpers():
    assert quotas([1 / 3, 1 / 3, 1 / 3], 10) == [4, 3, 3]
    assert sum(quotas([0.7, 0.2, 0.1], 33)) == 33
    taken = cycle_take([10, 11, 12], start=2, count=5, seed=0, stream=0)
    assert len(taken) == 5 and set(taken[1:4]) == {10, 11, 12}  # positions 3..5 are one whole pass


def test_mixture_run_reports_validation_loss_per_task(make_config, chat_writer, tmp_path):
    facts = chat_writer(tmp_path / "facts.jsonl", repeat=3)
    sums = chat_writer(tmp_path / "sums.jsonl", pairs=OTHER, repeat=3)
    config = make_config(
        "mix", data={"train": [], "split": {"train": 0.75, "validation": 0.25}},
        mixture=[{"task": "facts", "data": [str(facts)], "weight": 3},
                 {"task": "sums", "data": [str(sums)], "weight": 1}],
        train={"max_steps": 4, "eval_every": 2},
    )
    result = run(config, progress=False)
    assert result.status == "completed"
    assert (config.run_dir / "data/facts/manifest.json").is_file() and (config.run_dir / "data/sums/train.jsonl").is_file()
    evals = [r for r in read_jsonl(config.run_dir / "train_log.jsonl") if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for row in evals:
        per_task = [row["val_loss/facts"], row["val_loss/sums"]]
        assert min(per_task) <= row["val_loss"] <= max(per_task)
        assert row["val_ppl/sums"] == pytest.approx(np.exp(row["val_loss/sums"]))
    summary = json.loads((config.run_dir / "summary.json").read_text())
    tasks = {t["task"]: t for t in summary["mixture"]["tasks"]}
    assert tasks["facts"]["probability"] == pytest.approx(0.75) and tasks["sums"]["weight"] == 1
    n = summary["data"]["train"]["examples"]
    assert n == tasks["facts"]["train_examples"] + tasks["sums"]["train_examples"] == summary["mixture"]["epoch_size"]
    assert tasks["facts"]["per_epoch"] == round(0.75 * n) and tasks["sums"]["per_epoch"] == n - round(0.75 * n)
    assert set(summary["final_val_loss_per_task"]) == {"facts", "sums"}
    assert set(summary["data"]["train"]["tasks"]) == {"facts", "sums"}


def test_mixture_errors(tmp_path, make_config, chat_file):
    path = tmp_path / "exp.yaml"
    path.write_text("name: demo\nmixture:\n  - {task: a, data: a.jsonl, weight: 2}\n  - task: b\n    data: b.jsonl\n"
                    "    weight: 0\n  - {task: c, dta: c.jsonl}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["mixture[1].weight (line 6): must be > 0, got 0",
                                 "mixture[2].data (line 7): required, but missing",
                                 "mixture[2].dta (line 7): unknown key; did you mean 'data'?"]

    path.write_text("name: demo\nmixture:\n  - {task: a, data: a.jsonl}\n  - {task: a, data: b.jsonl}\n")
    with pytest.raises(ConfigError, match="task names must be unique, a repeated"):
        load_config(path)

    path.write_text("name: demo\ndata: {train: x.jsonl}\nmixture:\n  - {task: a, data: a.jsonl}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="give data.train or a mixture, not both"):
        load_config(path)

    config = make_config("missing", data={"train": []},
                         mixture=[{"task": "facts", "data": [str(chat_file)]},
                                  {"task": "ghost", "data": [str(tmp_path / "nope.jsonl")]}])
    with pytest.raises(TunelabError, match=r"mixture task 'ghost': data file .*nope.jsonl not found"):
        run(config, progress=False)
    assert not (config.run_dir / "checkpoints").exists()
