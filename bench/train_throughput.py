"""Training throughput: tunelab vs TRL's SFTTrainer, LoRA r16 on all linear layers, SFT on the handbook.

Same model (the bundled SmolLM2-135M-Instruct), same prepared examples (tunelab's data pipeline, split
0.9/0.1), same epochs, batch, learning rate, schedule (linear, no warmup: TRL's defaults) and LoRA
settings. TRL runs at its defaults otherwise (gradient checkpointing on, padding, no packing) with one
exception stated in the output: TRL defaults to bf16, and on a CPU without avx512_bf16/AMX bf16 matmuls
are emulated (tens of times slower), so TRL is run in fp32 as a user here would have to; `--trl-bf16-steps`
times a few steps of TRL at its true bf16 default for the record. Conversations are given to TRL as
conversational prompt/completion pairs, so it trains on the completion only, as tunelab's sft does.

Each framework trains in its own subprocess (so peak memory is its own), both with OMP_WAIT_POLICY=ACTIVE,
which the tunelab command line sets (a user's own setting wins for both). Printed: tokens/s (wall and
per CPU-second: this machine may be shared, CPU time is the steadier figure), the ratio, the final
training and validation loss of each (each trained model scored by one token-level evaluator on the first
128 training records and on the validation split; the mean logged loss of the last steps is printed too,
but it depends on which batches each framework happened to draw last), peak RSS, and tunelab's model
FLOPs utilisation: tokens/s x (4N + 12 x layers x d_attn x mean length) against this machine's measured
fp32 matmul peak (this CPU has no bf16 hardware, so a bf16 peak does not apply).

    .venv/bin/python bench/train_throughput.py                # 1 epoch, both frameworks
    .venv/bin/python bench/train_throughput.py --max-steps 10 --extras
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "handbook" / "train.jsonl"
MODEL = "smollm2-135m-instruct"
TRL_VERSION = "1.16.0"
# The final training loss compared between frameworks: both trained models scored by one evaluator on the
# first records of the training split (the mean of the last steps' losses depends on which batches came last).
TRAIN_LOSS_RECORDS = 128
HP = {"lr": 2e-4, "batch_size": 8, "epochs": 1, "max_length": 512, "r": 16, "alpha": 32, "dropout": 0.05, "seed": 42}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _data_config(workdir: Path) -> dict:
    return {"train": [str(DATA)], "split": {"train": 0.9, "validation": 0.1}, "max_length": HP["max_length"],
            "seed": HP["seed"]}


def _experiment(workdir: Path, name: str, method: str, model: str, max_steps: int | None) -> dict:
    return {
        "name": name, "workdir": str(workdir), "model": {"name": model},
        "data": _data_config(workdir),
        "method": {"name": method, "r": HP["r"], "alpha": HP["alpha"], "dropout": HP["dropout"]},
        "train": {"epochs": HP["epochs"], "max_steps": max_steps, "lr": HP["lr"] if method != "full" else 2e-5,
                  "batch_size": HP["batch_size"], "scheduler": "linear", "warmup_ratio": 0.0, "seed": HP["seed"],
                  "save_every": 100_000},
    }


# -- workers (each in its own process) ----------------------------------------------------------------


def worker_tunelab(spec: dict) -> dict:
    import torch

    from tunelab.config import ExperimentConfig
    from tunelab.train import run

    torch.set_num_threads(spec["threads"])
    os.environ["TUNELAB_THREADS"] = str(spec["threads"])
    config = ExperimentConfig.model_validate(spec["experiment"])
    result = run(config, progress=False)
    s = result.summary
    peak_rss = _peak_rss_mb()  # training's peak, before a second copy of the model is loaded to score it
    train_set_loss = None
    if spec.get("score_train_set"):
        from peft import PeftModel

        from tunelab.models.loading import load_model, load_tokenizer

        tokenizer = load_tokenizer(config.model.name)
        model = PeftModel.from_pretrained(load_model(config.model.name, dtype="float32"), str(result.run_dir))
        train_set_loss = _split_loss(model, tokenizer, result.run_dir / "data", "train", TRAIN_LOSS_RECORDS)
    steps = [r["loss"] for r in _read_log(result.run_dir / "train_log.jsonl") if "loss" in r]
    return {
        "framework": "tunelab", "method": config.method.name, "model": config.model.name,
        "tokens": s["tokens_trained"], "train_seconds": s["train_seconds"], "cpu_seconds": s["train_cpu_seconds"],
        "steps": s["steps"], "final_train_loss": _tail_mean(steps), "val_loss": s["final_val_loss"],
        "train_set_loss": train_set_loss, "peak_rss_mb": peak_rss, "params": s["total_params"], "trainable": s["trainable_params"],
        "mean_length": s["data"]["train"]["tokens"] / max(1, s["data"]["train"]["examples"]),
        "examples": s["data"]["train"]["examples"],
        "layout": s["layout"], "precision": s["precision"], "dataset_hash": s["dataset_hash"],
    }


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tail_mean(values: list[float], fraction: float = 0.25) -> float | None:
    if not values:
        return None
    tail = values[-max(1, int(len(values) * fraction)) :]
    return sum(tail) / len(tail)


def _ensure_trl() -> None:
    if importlib.util.find_spec("trl") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"trl=={TRL_VERSION}"], check=True)


def _split_loss(model, tokenizer, dataset_dir: Path, split: str = "validation", limit: int | None = None) -> float:
    """The same evaluator tunelab reports: token-level NLL over a split's completion tokens (its first
    `limit` records)."""
    import contextlib

    import torch

    from tunelab.data.prepare import load_split
    from tunelab.train.batching import Layout
    from tunelab.train.loop import evaluate
    from tunelab.train.loss import loss_head
    from tunelab.train.objectives import build_sft

    examples, _ = build_sft(load_split(dataset_dir, split)[:limit], tokenizer, HP["max_length"])
    layout = Layout(packing=False, capacity=HP["max_length"], pad_id=tokenizer.pad_token_id or 0)
    with loss_head(model) as head:
        return evaluate(model, head, examples, layout, torch.device("cpu"), contextlib.nullcontext, 4096)["val_loss"]


def worker_trl(spec: dict) -> dict:
    _ensure_trl()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunelab.data.prepare import load_split
    from tunelab.models.loading import load_tokenizer
    from tunelab.models.registry import model_path

    torch.set_num_threads(spec["threads"])
    dataset_dir = Path(spec["dataset_dir"])
    tokenizer = load_tokenizer(MODEL)
    model = AutoModelForCausalLM.from_pretrained(model_path(MODEL), dtype=torch.float32)
    rows = [{"prompt": r.messages[:-1], "completion": r.messages[-1:]} for r in load_split(dataset_dir, "train")]
    options = {"bf16": False} if not spec.get("trl_defaults") else {}
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), num_train_epochs=HP["epochs"],
        max_steps=spec.get("max_steps") or -1, per_device_train_batch_size=HP["batch_size"],
        learning_rate=HP["lr"], max_length=HP["max_length"], logging_steps=1, save_strategy="no",
        report_to=[], seed=HP["seed"], dataloader_num_workers=0, use_cpu=True, **options,
    )
    peft_config = LoraConfig(r=HP["r"], lora_alpha=HP["alpha"], lora_dropout=HP["dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    counted = {"tokens": 0}
    collate = trainer.data_collator

    def counting(examples):
        counted["tokens"] += sum(len(e["input_ids"]) for e in examples)
        return collate(examples)

    trainer.data_collator = counting
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_rss = _peak_rss_mb()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out = {
        "framework": "trl" + (" (bf16 default)" if spec.get("trl_defaults") else " (fp32)"), "method": "lora",
        "model": MODEL, "tokens": counted["tokens"], "train_seconds": wall, "cpu_seconds": cpu,
        "steps": trainer.state.global_step, "final_train_loss": _tail_mean(losses), "peak_rss_mb": peak_rss,
        "gradient_checkpointing": args.gradient_checkpointing, "packing": args.packing, "bf16": args.bf16,
    }
    if not spec.get("trl_defaults"):
        out["val_loss"] = _split_loss(trainer.model, tokenizer, dataset_dir)
        out["train_set_loss"] = _split_loss(trainer.model, tokenizer, dataset_dir, "train", TRAIN_LOSS_RECORDS)
    return out


def worker_peak(spec: dict) -> dict:
    """This machine's fp32 matmul rate with the benchmark's thread count (the MFU denominator)."""
    import torch

    torch.set_num_threads(spec["threads"])
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * 2048**3 / (time.perf_counter() - start))
    return {"fp32_gflops": best / 1e9}


WORKERS = {"tunelab": worker_tunelab, "trl": worker_trl, "peak": worker_peak}


# -- driver -------------------------------------------------------------------------------------------


def _spawn(kind: str, spec: dict, script: str = __file__) -> dict:
    """Run `script --worker kind` in its own process: this file's, or another bench's (grpo_throughput.py,
    preference_throughput.py) that spawns its workers here too."""
    # OMP_WAIT_POLICY=ACTIVE is what the tunelab command line sets (cli/__init__.py); both frameworks get it
    env = {"OMP_WAIT_POLICY": "ACTIVE", **os.environ, "PYTHONPATH": str(ROOT / "src"),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, script, "--worker", kind, "--spec", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"framework": kind, "error": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tps(r: dict, key: str = "train_seconds") -> float:
    return r["tokens"] / r[key] if r.get(key) else 0.0


def _flops_per_token(r: dict, layers: int, d_attn: int, full: bool) -> float:
    return (6 if full else 4) * r["params"] + 12 * layers * d_attn * r["mean_length"]


def _row(r: dict) -> str:
    if "error" in r:
        return f"{r['framework']:<22} FAILED: {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''}"
    def num(key: str) -> str:
        return f"{r[key]:.4f}" if r.get(key) is not None else "-"

    model = "" if r.get("model", MODEL) == MODEL else f" {r['model']}"
    return (f"{r['framework'] + ' ' + r.get('method', '') + model:<30} {_tps(r):>8.1f} {_tps(r, 'cpu_seconds'):>9.1f} "
            f"{r['steps']:>6} {num('train_set_loss'):>9} {num('final_train_loss'):>10} {num('val_loss'):>9} "
            f"{r['peak_rss_mb']:>9.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--spec", default="{}")
    parser.add_argument("--max-steps", type=int, default=None, help="limit both runs (default: one epoch)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: physical cores)")
    parser.add_argument("--extras", action="store_true", help="also full fine-tuning, qlora and Gemma-3-270M LoRA")
    parser.add_argument("--extra-steps", type=int, default=8)
    parser.add_argument("--trl-bf16-steps", type=int, default=0, help="time TRL at its bf16 default for N steps")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.spec))))
        return 0

    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.config import DataConfig
    from tunelab.data.prepare import run as prepare
    from tunelab.models.hardware import bf16_pays, physical_cores

    threads = args.threads or physical_cores()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tunelab-train-bench-"))
    dataset_dir = workdir / "data"
    prepared = prepare(DataConfig.model_validate(_data_config(workdir)), dataset_dir)
    base = {"threads": threads, "max_steps": args.max_steps, "dataset_dir": str(dataset_dir)}

    results = {"peak": _spawn("peak", base)}
    results["tunelab"] = _spawn("tunelab", {**base, "score_train_set": True,
                                            "experiment": _experiment(workdir, "tunelab-lora", "lora", MODEL,
                                                                      args.max_steps)})
    results["trl"] = _spawn("trl", base)
    if args.trl_bf16_steps:
        results["trl_bf16"] = _spawn("trl", {**base, "max_steps": args.trl_bf16_steps, "trl_defaults": True})
    if args.extras:
        for name, method, model in (("full", "full", MODEL), ("qlora", "qlora", MODEL),
                                    ("gemma-lora", "lora", "gemma3-270m")):
            results[name] = _spawn("tunelab", {**base, "experiment": _experiment(workdir, f"x-{name}", method, model,
                                                                                 args.extra_steps)})

    pays, why = bf16_pays("cpu")
    peak = results["peak"].get("fp32_gflops", 0.0)
    print(f"machine: {threads} threads, bf16 {'pays' if pays else 'does not pay'} ({why}); "
          f"measured fp32 matmul peak {peak:.1f} GFLOP/s")
    print(f"data: {prepared.splits} records, dataset {prepared.manifest['dataset_hash'][:12]}; "
          f"hyperparameters {HP}, schedule linear, no warmup")
    print(f"{'framework':<30} {'tok/s':>8} {'tok/cpu-s':>9} {'steps':>6} {'train':>9} {'last steps':>10} {'val':>9} "
          f"{'peak MB':>9}")
    print(f"(train: the trained model scored on the first {TRAIN_LOSS_RECORDS} training records by one evaluator; "
          "last steps: mean logged loss of the last quarter of steps, which depends on the batches that came last)")
    for r in results.values():
        if "framework" in r:
            print(_row(r))
    tl, trl = results["tunelab"], results["trl"]
    if "error" not in tl and "error" not in trl:
        ratio, cpu_ratio = _tps(tl) / _tps(trl), _tps(tl, "cpu_seconds") / _tps(trl, "cpu_seconds")
        print(f"tunelab / TRL tokens/s: {ratio:.2f}x wall, {cpu_ratio:.2f}x per CPU-second (target >= 4x)")
        for key in ("train_set_loss", "val_loss"):
            if tl.get(key) and trl.get(key):
                print(f"{key}: tunelab {tl[key]:.4f} vs TRL {trl[key]:.4f} ({100 * (tl[key] / trl[key] - 1):+.2f}%)")
        from transformers import AutoConfig

        from tunelab.models.registry import model_path

        cfg = AutoConfig.from_pretrained(model_path(MODEL))
        d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        flops = _flops_per_token(tl, cfg.num_hidden_layers, d_attn, full=False)
        if peak:
            print(f"tunelab MFU: {_tps(tl) * flops / 1e9:.1f} GFLOP/s of model FLOPs = {100 * _tps(tl) * flops / 1e9 / peak:.1f}% "
                  f"of the measured fp32 peak ({flops / 1e6:.0f} MFLOP/token: 4N + attention)")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
