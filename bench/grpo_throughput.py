"""GRPO throughput: tunelab's grpo objective vs TRL's GRPOTrainer on the same prompts and settings.

Same model (the bundled SmolLM2-135M-Instruct), same prompts (the first handbook Q&A conversations, the
final assistant turn dropped), same reward (length: 1 at TARGET generated tokens, falling linearly to 0
at 0 and 2 x TARGET, the end-of-turn token counted), same group size, completion cap, sampling
(temperature 1, top_p 1), KL coefficient 0.04, clipping 0.2, one iteration per batch, learning rate,
constant schedule, LoRA r16/alpha32/dropout 0.05 on all linear layers, and steps. Both run in fp32 (TRL's
bf16 default on a CPU without bf16 hardware is emulated; tunelab pins fp32 here too so the arithmetic is
the same); TRL otherwise at its defaults (gradient checkpointing on; loss_type dapo, which is token-level
like tunelab's).

Printed: prompts/s including generation (wall and per CPU-second: this machine may be shared), the mean
reward logged over the last half of the steps, and the mean reward of each trained model on held-out
prompts sampled by one evaluator (tunelab's Generator, fixed seed, 4 samples each), next to the base
model's; the ratio; the machine (CPU flags, threads).

    .venv/bin/python bench/grpo_throughput.py --steps 4 --prompts 4 --group 4 --max-new 32 --target 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "handbook" / "train.jsonl"
MODEL = "smollm2-135m-instruct"
HP = {"lr": 5e-5, "r": 16, "alpha": 32, "dropout": 0.05, "seed": 42, "beta": 0.04, "epsilon": 0.2}
HELD_OUT = 8  # prompts after the training ones, for the evaluator


def _conversations(start: int, n: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["messages"] for r in rows[start : start + n]]


def length_reward(n_tokens: int, target: int) -> float:
    return max(0.0, 1.0 - abs(n_tokens - target) / target)


def evaluate(model, tokenizer, spec: dict) -> list[float]:
    """Mean length reward of 4 seeded samples per held-out prompt (the same evaluator for every model)."""
    from tunelab.models.generate import GenerationConfig, Generator

    prompts = [m[:-1] for m in _conversations(spec["n_train"], HELD_OUT)]
    gen = Generator(model, tokenizer, threads=spec["threads"])
    outs = gen.generate([p for p in prompts for _ in range(4)],
                        GenerationConfig(max_new_tokens=spec["max_new"], temperature=1.0, seed=7, batch_size=64))
    values = [length_reward(o.n_new_tokens, spec["target"]) for o in outs]
    return [sum(values[i : i + 4]) / 4 for i in range(0, len(values), 4)]


def _mean_se(values: list[float]) -> str:
    """mean +- standard error over the held-out prompts (a prompt's samples are averaged first: they are
    not independent of each other)."""
    n = len(values)
    mean = sum(values) / n
    se = (sum((v - mean) ** 2 for v in values) / (n - 1) / n) ** 0.5 if n > 1 else float("nan")
    return f"{mean:.3f} +- {se:.3f}"


def worker_tunelab(spec: dict) -> dict:
    import torch

    from tunelab.config import ExperimentConfig
    from tunelab.train import run

    torch.set_num_threads(spec["threads"])
    os.environ["TUNELAB_THREADS"] = str(spec["threads"])
    data = Path(spec["workdir"]) / "prompts.jsonl"
    config = ExperimentConfig.model_validate({
        "name": "tunelab-grpo", "workdir": spec["workdir"], "model": {"name": MODEL},
        "data": {"train": [str(data)], "split": {"train": 1.0, "validation": 0.0}, "dedup": "none", "pii": "off",
                 "max_length": 512, "seed": HP["seed"]},
        "method": {"name": "lora", "r": HP["r"], "alpha": HP["alpha"], "dropout": HP["dropout"]},
        "train": {"objective": "grpo", "max_steps": spec["steps"], "batch_size": spec["prompts"], "lr": HP["lr"],
                  "scheduler": "constant", "warmup_ratio": 0.0, "precision": "fp32", "seed": HP["seed"],
                  "save_every": 100_000,
                  "grpo": {"group_size": spec["group"], "max_new_tokens": spec["max_new"], "beta": HP["beta"],
                           "epsilon": HP["epsilon"], "temperature": 1.0, "top_p": 1.0, "iterations": 1},
                  "rewards": [{"name": "length", "options": {"target": spec["target"]}}]},
    })
    result = run(config, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    from tunelab.models.loading import load_tokenizer

    s = result.summary
    # the loop's own time (generation included), as TRL's is timed around trainer.train()
    return {"framework": "tunelab", "steps": s["steps"], "train_seconds": s["train_seconds"],
            "cpu_seconds": s["train_cpu_seconds"], "rewards": rewards, "generate_s": sum(r.get("generate_s", 0) for r in rows),
            "held_out_reward": evaluate(result.model, load_tokenizer(MODEL), spec), "precision": s["precision"]}


def worker_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.models.loading import load_tokenizer
    from tunelab.models.registry import model_path

    torch.set_num_threads(spec["threads"])
    tokenizer = load_tokenizer(MODEL)
    model = AutoModelForCausalLM.from_pretrained(model_path(MODEL), dtype=torch.float32)
    rows = [{"prompt": m[:-1]} for m in _conversations(0, spec["n_train"])]

    def length(completions, completion_ids=None, **_kwargs):
        return [length_reward(len(ids), spec["target"]) for ids in completion_ids]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-grpo-bench-"), max_steps=spec["steps"],
        per_device_train_batch_size=spec["prompts"] * spec["group"], num_generations=spec["group"],
        max_completion_length=spec["max_new"], temperature=1.0, top_p=1.0, beta=HP["beta"], epsilon=HP["epsilon"],
        num_iterations=1, learning_rate=HP["lr"], lr_scheduler_type="constant", warmup_steps=0,
        logging_steps=1, save_strategy="no", report_to=[], seed=HP["seed"], dataloader_num_workers=0,
        use_cpu=True, bf16=False,
    )
    peft_config = LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=HP["dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=[length], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft_config)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"framework": "trl", "steps": trainer.state.global_step, "train_seconds": wall, "cpu_seconds": cpu, "rewards": rewards, "held_out_reward": evaluate(trainer.model, tokenizer, spec),
            "loss_type": args.loss_type, "gradient_checkpointing": args.gradient_checkpointing}


def worker_base(spec: dict) -> dict:
    import torch

    from tunelab.models.loading import load_model, load_tokenizer

    torch.set_num_threads(spec["threads"])
    return {"framework": "base", "held_out_reward": evaluate(load_model(MODEL, dtype="float32"),
                                                             load_tokenizer(MODEL), spec)}


WORKERS = {"tunelab": worker_tunelab, "trl": worker_trl, "base": worker_base}


def _spawn(kind: str, spec: dict) -> dict:
    from train_throughput import _spawn as spawn  # the SFT bench's: same environment for both frameworks

    return spawn(kind, spec, script=__file__)


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}; {' '.join(wanted) or 'no avx2/avx512/amx'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--spec", default="{}")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-new", type=int, default=32)
    parser.add_argument("--target", type=int, default=16, help="the length reward's target tokens")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return 0

    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.models.hardware import physical_cores

    threads = args.threads or physical_cores()
    workdir = Path(tempfile.mkdtemp(prefix="tunelab-grpo-bench-"))
    n_train = args.steps * args.prompts  # one pass: both frameworks see every prompt once
    with open(workdir / "prompts.jsonl", "w", encoding="utf-8") as fh:
        for messages in _conversations(0, n_train):
            fh.write(json.dumps({"messages": messages}) + "\n")
    spec = {"threads": threads, "workdir": str(workdir), "steps": args.steps, "prompts": args.prompts,
            "group": args.group, "max_new": args.max_new, "target": args.target, "n_train": n_train}
    results = {kind: _spawn(kind, spec) for kind in ("base", "tunelab", "trl")}

    print(f"machine: {_cpu_flags()}; {threads} torch threads, {os.cpu_count()} logical CPUs")
    print(f"settings: {args.steps} steps x {args.prompts} prompts x group {args.group}, max_new_tokens "
          f"{args.max_new}, length target {args.target}, {HP}, fp32, LoRA all-linear, constant lr")
    base = results["base"]
    print(f"base model held-out reward: {_mean_se(base['held_out_reward']) if 'error' not in base else 'FAILED'}")
    print(f"{'framework':<10} {'prompts/s':>9} {'/cpu-s':>7} {'train s':>8} {'gen s':>6} {'reward 1st':>10} "
          f"{'last half':>9} {'held-out (mean +- se over ' + str(HELD_OUT) + ' prompts)'}")
    for name in ("tunelab", "trl"):
        r = results[name]
        if "error" in r:
            print(f"{name:<10} FAILED: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}")
            continue
        prompts = r["steps"] * args.prompts
        tail = r["rewards"][len(r["rewards"]) // 2 :]
        print(f"{name:<10} {prompts / r['train_seconds']:>9.3f} {prompts / r['cpu_seconds']:>7.3f} "
              f"{r['train_seconds']:>8.1f} {r.get('generate_s', 0):>6.1f} {r['rewards'][0]:>10.3f} "
              f"{sum(tail) / len(tail):>9.3f} {_mean_se(r['held_out_reward'])}")
    tl, trl = results["tunelab"], results["trl"]
    if "error" not in tl and "error" not in trl:
        print(f"tunelab / TRL prompts/s: {trl['train_seconds'] / tl['train_seconds']:.2f}x wall, "
              f"{trl['cpu_seconds'] / tl['cpu_seconds']:.2f}x per CPU-second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
