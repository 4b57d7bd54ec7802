"""Preference-tuning throughput: tunelab's dpo objective vs TRL's DPOTrainer on the handbook preferences.

Same data (examples/handbook/preferences.jsonl through tunelab's data pipeline, every pair trained on),
same model (the bundled SmolLM2-135M-Instruct), same LoRA settings (r16/alpha32/dropout 0.05 on all
linear layers), same beta, learning rate, schedule (linear, no warmup), pairs per step, max_length and
steps, and the same precision for both (fp32 by default; --precision bf16 for both). TRL runs at its
defaults otherwise (gradient checkpointing on, its reference = the adapter switched off, recomputed every
step). tunelab computes its reference log-probabilities once before the first step (train/preference.py):
that time is *added* to its training time here, so both figures include the reference's cost.

Tokens per pair are counted the same way for both: prompt + chosen plus prompt + rejected. Printed:
the machine (CPU flags, threads), tokens/s (wall and per CPU-second) of each, their ratio, and the final
DPO loss, reward margin and reward accuracy of each (the mean of the last quarter of logged steps).

Sections: `dpo` here, `grpo` through bench/grpo_throughput.py (TRL's GRPOTrainer; prompts/s including
generation), so one command prints both (`--sections dpo` or `--sections grpo` for one).

    nice .venv/bin/python bench/preference_throughput.py --max-steps 24
    nice .venv/bin/python bench/preference_throughput.py --max-steps 24 --batch-size 2 --pairs 24   # small
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import _peak_rss_mb, _spawn, _tail_mean, _tps  # noqa: E402  (the SFT bench's helpers)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "handbook" / "preferences.jsonl"
MODEL = "smollm2-135m-instruct"
HP = {"lr": 1e-4, "beta": 0.1, "max_length": 512, "r": 16, "alpha": 32, "dropout": 0.05,
      "seed": 42}


def _data_config(data: str) -> dict:
    return {"train": [data], "split": {"train": 1.0, "validation": 0.0}, "max_length": HP["max_length"],
            "seed": HP["seed"]}


# -- workers (each in its own process, so peak memory is its own) --------------------------------------


def worker_tunelab_dpo(spec: dict) -> dict:
    import torch

    from tunelab.config import ExperimentConfig
    from tunelab.train import run

    torch.set_num_threads(spec["threads"])
    os.environ["TUNELAB_THREADS"] = str(spec["threads"])
    config = ExperimentConfig.model_validate({
        "name": "tunelab-dpo", "workdir": spec["workdir"], "model": {"name": MODEL},
        "data": _data_config(spec["data"]),
        "method": {"name": "lora", "r": HP["r"], "alpha": HP["alpha"], "dropout": HP["dropout"]},
        "train": {"objective": "dpo", "preference": {"beta": HP["beta"]}, "max_steps": spec["max_steps"],
                  "lr": HP["lr"], "batch_size": spec["batch_size"], "scheduler": "linear", "warmup_ratio": 0.0,
                  "seed": HP["seed"], "precision": spec["precision"], "save_every": 100_000},
    })
    result = run(config, progress=False)
    s = result.summary
    rows = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and r.get("event") is None]
    reference = s["preference"]["reference_seconds"]
    return {
        "framework": "tunelab", "tokens": s["tokens_trained"], "train_seconds": s["train_seconds"] + reference,
        "cpu_seconds": s["train_cpu_seconds"] + reference, "reference_seconds": reference, "steps": s["steps"],
        "loss": _tail_mean([r["loss"] for r in steps]),
        "margin": _tail_mean([r["reward_margin"] for r in steps]),
        "accuracy": _tail_mean([r["reward_accuracy"] for r in steps]),
        "peak_rss_mb": _peak_rss_mb(), "pairs": s["data"]["train"]["examples"], "precision": s["precision"],
    }


def worker_trl_dpo(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tunelab.data.prepare import load_split
    from tunelab.models.loading import load_tokenizer
    from tunelab.models.registry import model_path

    torch.set_num_threads(spec["threads"])
    tokenizer = load_tokenizer(MODEL)
    model = AutoModelForCausalLM.from_pretrained(model_path(MODEL), dtype=torch.float32)
    rows = [{"prompt": r.messages, "chosen": [{"role": "assistant", "content": r.chosen}],
             "rejected": [{"role": "assistant", "content": r.rejected}]}
            for r in load_split(Path(spec["dataset_dir"]), "train")]
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-bench-"), max_steps=spec["max_steps"], beta=HP["beta"],
        per_device_train_batch_size=spec["batch_size"], learning_rate=HP["lr"], lr_scheduler_type="linear",
        max_length=HP["max_length"], logging_steps=1, save_strategy="no", report_to=[], seed=HP["seed"],
        dataloader_num_workers=0, use_cpu=True, bf16=spec["precision"] == "bf16",
    )
    peft_config = LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=HP["dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    batches: list[int] = []  # tokens of each batch the data loader collated (it fetches one ahead)
    collate = trainer.data_collator

    def counting(examples):  # prompt + chosen and prompt + rejected, as tunelab counts a pair
        batches.append(sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"])
                           for e in examples))
        return collate(examples)

    trainer.data_collator = counting
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "framework": "trl", "tokens": sum(batches[: trainer.state.global_step]), "train_seconds": wall, "cpu_seconds": cpu,
        "steps": trainer.state.global_step, "loss": _tail_mean([h["loss"] for h in logs]),
        "margin": _tail_mean([h["rewards/margins"] for h in logs if "rewards/margins" in h]),
        "accuracy": _tail_mean([h["rewards/accuracies"] for h in logs if "rewards/accuracies" in h]),
        "peak_rss_mb": _peak_rss_mb(), "pairs": len(rows), "gradient_checkpointing": args.gradient_checkpointing,
        "precompute_ref_log_probs": args.precompute_ref_log_probs,
    }


WORKERS: dict[str, Callable[[dict], dict]] = {"tunelab_dpo": worker_tunelab_dpo, "trl_dpo": worker_trl_dpo}


# -- driver -------------------------------------------------------------------------------------------


def spawn(kind: str, spec: dict) -> dict:
    return _spawn(kind, spec, __file__)


def _num(r: dict, key: str) -> str:
    return f"{r[key]:.4f}" if r.get(key) is not None else "-"


def section_dpo(args, base: dict) -> list[str]:
    """tunelab's dpo objective and TRL's DPOTrainer, one subprocess each; returns the printed lines."""
    from tunelab.config import DataConfig
    from tunelab.data.prepare import run as prepare

    data = DATA
    if args.pairs:  # the first N pairs only, for both (tunelab's reference pass covers just what trains)
        data = Path(base["workdir"]) / "preferences.jsonl"
        data.write_text("".join(DATA.read_text(encoding="utf-8").splitlines(keepends=True)[: args.pairs]),
                        encoding="utf-8")
    dataset_dir = Path(base["workdir"]) / "dpo-data"
    prepared = prepare(DataConfig.model_validate(_data_config(str(data))), dataset_dir)
    spec = {**base, "dataset_dir": str(dataset_dir), "data": str(data), "batch_size": args.batch_size}
    results = [spawn("tunelab_dpo", spec), spawn("trl_dpo", spec)]
    lines = [f"DPO: {prepared.splits} pairs (dataset {prepared.manifest['dataset_hash'][:12]}), {args.max_steps} "
             f"steps of {args.batch_size} pairs, precision {args.precision} for both; hyperparameters {HP}, "
             "schedule linear, no warmup",
             f"{'framework':<10} {'tok/s':>8} {'tok/cpu-s':>9} {'steps':>6} {'loss':>8} {'margin':>8} {'acc':>6} "
             f"{'peak MB':>8}  notes"]
    for r in results:
        if "error" in r:
            last = r["error"].strip().splitlines()[-1] if r["error"].strip() else ""
            lines.append(f"{r['framework']:<10} FAILED: {last}")
            continue
        notes = (f"incl. {r['reference_seconds']:.1f}s precomputing the reference" if r["framework"] == "tunelab"
                 else f"gradient checkpointing {r['gradient_checkpointing']}, reference = adapter off each step")
        lines.append(f"{r['framework']:<10} {_tps(r):>8.1f} {_tps(r, 'cpu_seconds'):>9.1f} {r['steps']:>6} "
                     f"{_num(r, 'loss'):>8} {_num(r, 'margin'):>8} {_num(r, 'accuracy'):>6} "
                     f"{r['peak_rss_mb']:>8.0f}  {notes}")
    tl, trl = results
    if "error" not in tl and "error" not in trl:
        lines.append(f"tunelab / TRL tokens/s: {_tps(tl) / _tps(trl):.2f}x wall, "
                     f"{_tps(tl, 'cpu_seconds') / _tps(trl, 'cpu_seconds'):.2f}x per CPU-second")
    if args.json:
        lines.append(json.dumps(results, indent=2))
    return lines


def section_grpo(args, base: dict) -> list[str]:
    """TRL's GRPOTrainer vs tunelab's grpo: bench/grpo_throughput.py (its own options: run it directly to
    set prompts, group, lengths), here at this run's steps and threads; its lines without its machine line."""
    import subprocess

    command = [sys.executable, str(Path(__file__).with_name("grpo_throughput.py")), "--steps", str(args.max_steps),
               "--threads", str(base["threads"])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return [f"GRPO: FAILED ({' '.join(command[1:])}): {done.stderr.strip()[-2000:]}"]
    return ["GRPO:", *[line for line in done.stdout.splitlines() if not line.startswith("machine:")]]


# name -> function(args, base spec) returning its printed lines
SECTIONS: dict[str, Callable] = {"dpo": section_dpo, "grpo": section_grpo}


def machine_line(threads: int) -> str:
    import torch

    from tunelab.models.hardware import bf16_pays, cpu_features

    features = cpu_features()
    flags = ", ".join(k for k, v in features.items() if v is True) or "none of note"
    pays, why = bf16_pays("cpu")
    return (f"machine: {os.cpu_count()} logical CPUs, {threads} torch threads, torch {torch.__version__}; "
            f"CPU flags: {flags}; bf16 {'pays' if pays else 'does not pay'} ({why})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--spec", default="{}")
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=sorted(SECTIONS))
    parser.add_argument("--max-steps", type=int, default=24, help="optimizer steps of every run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for all (default: physical cores)")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step, for both")
    parser.add_argument("--pairs", type=int, default=None, help="train on the first N pairs only (default: all)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="for both frameworks")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return 0

    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.models.hardware import physical_cores

    threads = args.threads or physical_cores()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tunelab-preference-bench-"))
    base = {"threads": threads, "max_steps": args.max_steps, "precision": args.precision, "workdir": str(workdir)}
    print(machine_line(threads))
    for name in args.sections:
        for line in SECTIONS[name](args, base):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
