"""Data parallelism: two processes (torchrun, gloo on CPU, process group joined through accelerate) train
to the same weights, losses and validation losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.io import read_jsonl
from tunelab.train import run
from tunelab.train.distributed import Dist, _buckets, _fsdp_options, setup

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"

SETTINGS = dict(data={"split": {"train": 0.75, "validation": 0.25}},
                train={"epochs": 1, "lr": 1e-2, "eval_every": 2})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config, tmp_path, **env_extra) -> dict:
    """`torchrun --nproc_per_node 2 tunelab train CONFIG --json`, as a user launches it; its one report."""
    config_file = tmp_path / f"{config.name}.yaml"
    config_file.write_text(yaml.safe_dump(config.resolved()), encoding="utf-8")
    script = tmp_path / "launch_tunelab.py"
    script.write_text("from tunelab.cli import main\nmain()\n", encoding="utf-8")
    env = {**os.environ, "TUNELAB_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env_extra}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         str(script), "train", str(config_file), "--json"],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1  # rank 0 reports for both processes
    return reports[0]


def test_two_processes_match_one_with_the_same_global_batch(make_config, chat_writer, tmp_path):
    data = chat_writer(tmp_path / "facts.jsonl", repeat=3)  # 18 train examples: 5 steps of 4, the last of 2
    single = run(make_config("one-process", data_file=data, **{**SETTINGS, "train": {**SETTINGS["train"],
                                                                                     "batch_size": 4}}),
                 progress=False)
    config = make_config("two-processes", data_file=data, **{**SETTINGS, "train": {**SETTINGS["train"],
                                                                                   "batch_size": 2}})
    _launch(config, tmp_path)
    summary = json.loads((config.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4 == single.summary["global_batch"]
    assert summary["steps"] == single.summary["steps"] == 5

    # same step losses and validation losses (rank 0 wrote the one log)
    two = read_jsonl(config.run_dir / "train_log.jsonl")
    one = read_jsonl(single.run_dir / "train_log.jsonl")
    assert [r["step"] for r in two if "loss" in r] == [1, 2, 3, 4, 5]
    for a, b in zip(one, two, strict=True):
        assert a.get("event") == b.get("event")
        for key in ("loss", "val_loss", "tokens", "val_loss_tokens"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)

    # the same final weights
    w2 = load_file(str(config.run_dir / "adapter_model.safetensors"))
    w1 = load_file(str(single.run_dir / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys()
    moved = 0.0
    for name in w1:
        assert torch.allclose(w1[name], w2[name], atol=2e-5), name
        moved = max(moved, float(w1[name].abs().max()))
    assert moved > 1e-3  # training did move the weights


def test_fsdp_shards_and_still_matches_one_process(make_config, chat_writer, tmp_path):
    """FSDP2 over two processes (as `accelerate launch --config_file configs/accelerate/fsdp.yaml` sets it up):
    17 train examples in steps of 4 leave a last step of one example, so one process runs a zero-weight
    micro-batch (every forward is a collective), and the validation batches do not split evenly either."""
    data = chat_writer(tmp_path / "facts.jsonl", repeat=3)
    settings = {"data": {"split": {"train": 0.7, "validation": 0.3}},
                "train": {"epochs": 1, "lr": 1e-2, "eval_every": 2, "save_every": 2}}
    single = run(make_config("one", data_file=data, **{**settings, "train": {**settings["train"], "batch_size": 4}}),
                 progress=False)
    config = make_config("sharded", data_file=data,
                         **{**settings, "train": {**settings["train"], "batch_size": 1, "grad_accum": 2}})
    _launch(config, tmp_path, ACCELERATE_USE_FSDP="true", FSDP_RESHARD_AFTER_FORWARD="true")
    summary = json.loads((config.run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == single.summary["steps"] == 5
    assert summary["data"]["train"]["examples"] % 4 == 1  # the last step: one example, one process idle
    one = read_jsonl(single.run_dir / "train_log.jsonl")
    two = read_jsonl(config.run_dir / "train_log.jsonl")
    for key in ("loss", "val_loss"):
        assert [r[key] for r in two if key in r] == pytest.approx([r[key] for r in one if key in r], rel=1e-5)
    assert len([r for r in two if "val_loss" in r]) == 3  # steps 2, 4 and the last
    w2 = load_file(str(config.run_dir / "adapter_model.safetensors"))  # whole tensors, gathered from shards
    w1 = load_file(str(single.run_dir / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=2e-5) for k in w1)
    state = json.loads((config.run_dir / "checkpoints/step-0000004/state.json").read_text())
    assert state["fsdp"] is True and state["world_size"] == 2


def test_two_processes_in_bf16_match_one(make_config, chat_writer, tmp_path, monkeypatch):
    """The bf16 path across processes: the losses agree to 0.1% (argued in test_precision.py: the same
    bf16 roundings of the activations, only the order of the fp32 gradient sums differs)."""
    monkeypatch.setenv("TUNELAB_BF16", "1")
    data = chat_writer(tmp_path / "facts.jsonl", repeat=3)
    train = {**SETTINGS["train"], "precision": "auto"}
    single = run(make_config("one-bf16", data_file=data, **{**SETTINGS, "train": {**train, "batch_size": 4}}),
                 progress=False)
    config = make_config("two-bf16", data_file=data, **{**SETTINGS, "train": {**train, "batch_size": 2}})
    summary = _launch(config, tmp_path)  # the child processes inherit TUNELAB_BF16=1
    assert summary["precision"] == single.summary["precision"] == "bf16"
    one = [r["loss"] for r in read_jsonl(single.run_dir / "train_log.jsonl") if "loss" in r]
    two = [r["loss"] for r in read_jsonl(config.run_dir / "train_log.jsonl") if "loss" in r]
    assert len(one) == len(two) == 5
    assert two == pytest.approx(one, rel=1e-3)


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup("auto") is None


def test_deepspeed_config_without_deepspeed_says_so(monkeypatch):
    import importlib.util

    from tunelab.errors import TunelabError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as where DeepSpeed is not installed, even if it is here
                        lambda n, *a: None if n == "deepspeed" else real_find_spec(n, *a))

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(TunelabError, match="DeepSpeed is not installed"):
        setup("auto")


def test_gradient_buckets_keep_order_and_split_by_size(monkeypatch):
    import tunelab.train.distributed as distributed

    monkeypatch.setattr(distributed, "BUCKET_BYTES", 64)
    grads = [torch.zeros(8), torch.zeros(8), torch.zeros(4, dtype=torch.float64), torch.zeros(20)]
    buckets = list(_buckets(grads))
    assert [len(b) for b in buckets] == [2, 1, 1]
    assert all(a is b for a, b in zip([g for b in buckets for g in b], grads, strict=True))
    assert Dist(0, 1, 1, torch.device("cpu"), "gloo").is_main


def _launch_env(name: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file configs/accelerate/<name>.yaml` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(("name", "expected"), [
    ("ddp", (False, True, False)),
    ("fsdp", (True, True, False)),
    ("deepspeed_zero2", (True, False, False)),
    ("deepspeed_zero3", (True, True, False)),
])
def test_shipped_accelerate_configs_map_to_the_sharding_they_name(name, expected, monkeypatch):
    import importlib.util

    for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
        monkeypatch.delenv(key)
    for key, value in _launch_env(name).items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a GPU machine with DeepSpeed installed
                        lambda n, *a: object() if n == "deepspeed" else real_find_spec(n, *a))
    fsdp, reshard, offload, note = _fsdp_options(cuda=True)
    assert (fsdp, reshard, offload) == expected
    if name.startswith("deepspeed"):
        assert f"ZeRO-{name[-1]}" in note and "FSDP2" in note
        with pytest.raises(Exception, match="need CUDA GPUs"):
            _fsdp_options(cuda=False)


def test_deepspeed_offload_mapping(monkeypatch, tmp_path):
    import importlib.util

    from tunelab.errors import TunelabError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else real_find_spec(n, *a))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    assert _fsdp_options(cuda=True)[:3] == (True, True, True)
    config.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}))
    with pytest.raises(TunelabError, match="offload to nvme is not supported"):
        _fsdp_options(cuda=True)
    config.write_text(json.dumps({"zero_optimization": {"stage": 0}}))
    assert _fsdp_options(cuda=True)[0] is False
