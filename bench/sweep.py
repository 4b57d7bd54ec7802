"""A sweep's N trials against N separate `tunelab train` + `tunelab eval` runs of the same N configs.

Both sides train the same N settings (sampled once from a seeded generator, then enqueued in the sweep so
it tries exactly them, in order) on the same data, from the same base model, and score each trained
adapter's ROUGE-L on the same development records:

- sweep: one process (`tunelab.sweep.run`, started as a subprocess of this script, as `tunelab sweep` is):
  the data prepared and tokenized once, the base model loaded once and reused by every trial (its LoRA
  adapter unloaded between trials), each trial scored in process on the development split;
- separate: for each config, `tunelab train CONFIG key=value...` (prepares the data, loads the model,
  trains, holding out the same development records as its validation split: the same share and seed),
  then `tunelab eval --adapter RUN --data RUN/data/validation.jsonl` (loads the model again, answers the
  development questions): two processes per config, as a user would run them by hand.

Wall time includes every process's start-up, imports and model loading: that is what the sweep saves.
Both sides use one config (precision, threads, tracking), printed with the results; the per-trial
ROUGE-L of both sides is printed too, as a check that they trained and scored the same things. The
ratio depends on the trial length: the longer a trial trains, the smaller the share the sweep saves.

    .venv/bin/python bench/sweep.py                       # 4 trials, 4 steps each, 64 handbook records
    .venv/bin/python bench/sweep.py --trials 6 --steps 16 --records 128
    .venv/bin/python bench/sweep.py --tiny                 # a quick check on a tiny random model
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "handbook" / "train.jsonl"
MODEL = "smollm2-135m-instruct"
SPACE = {"train.lr": {"type": "float", "low": 5e-5, "high": 2e-3, "log": True},
         "method.r": {"type": "categorical", "choices": [8, 16]},
         "train.scheduler": {"type": "categorical", "choices": ["cosine", "constant"]}}
CLI = "import sys; from tunelab.cli import main; sys.exit(main())"  # `tunelab` with this checkout's code


def sample_settings(n: int, seed: int) -> list[dict]:
    """N settings drawn from SPACE (log-uniform learning rate), the same on every run of the bench."""
    rng = random.Random(seed)
    lr = SPACE["train.lr"]
    return [{"train.lr": float(f"{math.exp(rng.uniform(math.log(lr['low']), math.log(lr['high']))):.3g}"),
             "method.r": rng.choice(SPACE["method.r"]["choices"]),
             "train.scheduler": rng.choice(SPACE["train.scheduler"]["choices"])} for _ in range(n)]


def experiment(workdir: Path, model: str, data: Path, args: argparse.Namespace) -> dict:
    """One experiment for both sides. Generation during training is off (eval_generate_every beyond the
    run), so each side answers the development questions once per config, after training."""
    return {
        "name": "bench", "workdir": str(workdir), "model": {"name": model},
        "data": {"train": [str(data)], "split": {"train": round(1 - args.dev_share, 6), "validation": args.dev_share},
                 "max_length": args.max_length, "seed": 42},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": 2e-4, "warmup_ratio": 0.0,
                  "precision": args.precision, "eval_every": args.steps, "eval_generate_every": 10**9,
                  "seed": 42},
        "eval": {"metrics": ["rougeL"], "max_new_tokens": args.max_new_tokens, "batch_size": args.eval_batch_size},
        "tracking": {"enabled": not args.no_tracking},
        "sweep": {"space": SPACE, "objective": {"metric": "rougeL"}, "pruner": "none", "dev_share": args.dev_share,
                  "startup_trials": args.trials, "trials": args.trials},
    }


# -- the sweep side (its own process) -----------------------------------------------------------------


def worker_sweep(spec: dict) -> dict:
    from tunelab.config import load_config
    from tunelab.sweep import run

    config = load_config(spec["config"])
    result = run(config, trials=len(spec["settings"]), enqueue=spec["settings"], progress=False)
    return {"trials": [{"number": t["number"], "state": t["state"], "value": t["value"], "params": t["params"]}
                       for t in result.trials],
            "dev_records": result.dev["dev_records"], "train_records": result.dev["train_records"],
            "dev_sha256": _sha256(result.out_dir / "data" / "validation.jsonl")}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- the driver ---------------------------------------------------------------------------------------


def _env(threads: int) -> dict:
    # OMP_WAIT_POLICY=ACTIVE is what the tunelab command line sets; the sweep worker gets it too
    return {"OMP_WAIT_POLICY": "ACTIVE", **os.environ, "PYTHONPATH": str(ROOT / "src"),
            "TUNELAB_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _call(argv: list[str], env: dict, cwd: Path) -> tuple[float, dict]:
    """Run one process; (wall seconds, its --json output)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv[:6])} ...\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout[proc.stdout.index("{"):])


def machine(threads: int) -> str:
    import torch

    from tunelab.models.hardware import cpu_features, physical_cores

    feats = cpu_features()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU") \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or "unknown CPU"

    def flag(name: str) -> str:
        return "yes" if feats.get(name) else "no"

    return (f"{model}; avx2 {flag('avx2')}, avx512_bf16 {flag('avx512_bf16')}, "
            f"amx {flag('amx_bf16') if feats.get('amx_tile') else 'no'} (flags from {feats['source']}); "
            f"{threads} threads of {physical_cores()} physical cores, {os.cpu_count()} logical CPUs; "
            f"torch {torch.__version__}; python {platform.python_version()}")


def tiny_model(out: Path) -> Path:
    """A tiny random Llama with the bundled model's tokenizer and chat template: for a quick check only."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunelab.models.registry import model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path(MODEL))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["sweep"])
    parser.add_argument("--spec", default="{}")
    parser.add_argument("--trials", type=int, default=4, help="N: trials of the sweep = separate train+eval pairs")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps a trial trains (train.max_steps)")
    parser.add_argument("--records", type=int, default=64, help="the first N records of examples/handbook/train.jsonl")
    parser.add_argument("--dev-share", type=float, default=0.25, help="share of the records scored as the dev split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--precision", default="auto", help="train.precision of both sides (auto: bf16 where the "
                        "CPU has avx512_bf16/AMX, as a user gets it)")
    parser.add_argument("--threads", type=int, default=None, help="TUNELAB_THREADS of both (default: physical cores)")
    parser.add_argument("--no-tracking", action="store_true", help="tracking.enabled false on both sides")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled settings")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model, 2 trials of 2 steps: a quick check")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_sweep(json.loads(args.spec))))
        return 0
    if args.tiny:
        args.trials, args.steps, args.records, args.max_new_tokens = 2, 2, 24, 8

    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.models.hardware import physical_cores
    from tunelab.sweep.space import overrides

    threads = args.threads or physical_cores()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tunelab-sweep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "train-slice.jsonl"
    lines = [line for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()][: args.records]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = str(tiny_model(workdir / "tiny-model")) if args.tiny else MODEL
    env = _env(threads)
    settings = sample_settings(args.trials, args.seed)

    # the sweep: N trials in one process
    sweep_file = workdir / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(experiment(workdir / "sweep-side", model, data, args)), encoding="utf-8")
    spec = {"config": str(sweep_file), "settings": settings}
    sweep_s, swept = _call([sys.executable, __file__, "--worker", "sweep", "--spec", json.dumps(spec)], env, workdir)

    # the same N configs, each as `tunelab train` then `tunelab eval`
    separate_file = workdir / "separate.yaml"
    separate_file.write_text(yaml.safe_dump(experiment(workdir / "separate-side", model, data, args)),
                             encoding="utf-8")
    separate = []
    for i, values in enumerate(settings):
        train_s, trained = _call([sys.executable, "-c", CLI, "train", str(separate_file), f"name=config-{i}",
                                  *overrides(values), "--json"], env, workdir)
        run_dir = Path(trained["run_dir"])
        eval_s, scored = _call([sys.executable, "-c", CLI, "eval", "--model", model, "--adapter", str(run_dir),
                                "--data", str(run_dir / "data" / "validation.jsonl"), "--metrics", "rougeL",
                                "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
                                str(args.eval_batch_size), "--json"], env, workdir)
        separate.append({"settings": values, "train_s": train_s, "eval_s": eval_s,
                         "same_dev": _sha256(run_dir / "data" / "validation.jsonl") == swept["dev_sha256"],
                         "rougeL": scored["generation"]["metrics"]["rougeL"]["value"],
                         "n": scored["generation"]["n"]})

    train_total, eval_total = sum(r["train_s"] for r in separate), sum(r["eval_s"] for r in separate)
    separate_s = train_total + eval_total
    print(f"machine: {machine(threads)}")
    print(f"data: the first {args.records} records of {DATA.relative_to(ROOT)} -> {swept['train_records']} training "
          f"and {swept['dev_records']} development records (dev share {args.dev_share}); model "
          f"{'a tiny random Llama (--tiny)' if args.tiny else MODEL}, LoRA; {args.steps} steps a trial (batch "
          f"{args.batch_size}, max_length {args.max_length}), precision {args.precision}, objective ROUGE-L on the "
          f"development split ({args.max_new_tokens} new tokens), tracking {'off' if args.no_tracking else 'on'}; "
          f"every separate run held out the sweep's development records: "
          f"{'yes' if all(r['same_dev'] for r in separate) else 'NO'}")
    print(f"{'config':<7} {'settings':<58} {'sweep rougeL':>12} {'separate rougeL':>15}")
    for i, (row, trial) in enumerate(zip(separate, swept["trials"], strict=True)):
        text = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
        value = "-" if trial["value"] is None else f"{trial['value']:.4f}"
        print(f"{i:<7} {text:<58} {value:>12} {row['rougeL']:>15.4f}")
    print(f"sweep, {args.trials} trials in one process:              {sweep_s:8.1f} s")
    print(f"separate, {args.trials} x (tunelab train + tunelab eval):   {separate_s:8.1f} s "
          f"(train {train_total:.1f} s, eval {eval_total:.1f} s)")
    print(f"ratio separate / sweep: {separate_s / sweep_s:.2f}x (target >= 2x); outputs in {workdir}")
    if args.json:
        print(json.dumps({"sweep_s": sweep_s, "separate_s": separate_s, "sweep": swept, "separate": separate},
                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
