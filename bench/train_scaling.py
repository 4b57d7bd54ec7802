"""How tunelab's training time grows with data size: 1x, 4x and 16x the tokens, same everything else.

LoRA r16 on all linear layers of the bundled SmolLM2-135M-Instruct, SFT, batch 8, one epoch over the
first 16, 64 and 256 records of examples/handbook/train.jsonl (data preparation holds a tenth out for
validation; the examples and tokens each run trained are printed). Each size trains in its own process.
Printed per size: tokens, steps, training seconds, seconds per 1k tokens, and the time ratio against 1x
next to the token ratio. Linear scaling means the two ratios agree; the fixed start-up cost (model load,
data preparation) is printed apart, since it does not grow with data.

    .venv/bin/python bench/train_scaling.py            # 1x, 4x, 16x
    .venv/bin/python bench/train_scaling.py --base 8   # smaller sizes (8, 32, 128 examples)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402  (same directory: the shared worker and hyperparameters)


def _subset(path: Path, n: int, out: Path) -> Path:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if n > len(lines):
        raise SystemExit(f"{path} has {len(lines)} examples; --base x 16 = {n} is more")
    out.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=16, help="examples at 1x (default 16)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    sys.path.insert(0, str(tt.ROOT / "src"))
    from tunelab.models.hardware import physical_cores

    threads = args.threads or physical_cores()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tunelab-scaling-bench-"))
    rows = []
    for factor in (1, 4, 16):
        data = _subset(tt.DATA, args.base * factor, workdir / f"train-{factor}x.jsonl")
        experiment = tt._experiment(workdir, f"scale-{factor}x", "lora", tt.MODEL, None)
        experiment["data"] = {"train": [str(data)], "max_length": tt.HP["max_length"], "seed": tt.HP["seed"]}
        started = time.perf_counter()
        result = tt._spawn("tunelab", {"threads": threads, "experiment": experiment})
        wall = time.perf_counter() - started
        if "error" in result:
            print(f"{factor}x failed:\n{result['error']}")
            return 1
        rows.append({"factor": factor, "examples": result["examples"], "tokens": result["tokens"],
                     "steps": result["steps"], "train_seconds": result["train_seconds"], "wall_seconds": wall})

    print(f"LoRA r16, SmolLM2-135M, batch {tt.HP['batch_size']}, {threads} threads, one epoch per size")
    print(f"{'size':>5} {'examples':>8} {'tokens':>7} {'steps':>5} {'train s':>8} {'s/1k tok':>8} "
          f"{'tokens x':>8} {'time x':>7} {'start-up s':>10}")
    first = rows[0]
    for r in rows:
        print(f"{r['factor']:>4}x {r['examples']:>8} {r['tokens']:>7} {r['steps']:>5} {r['train_seconds']:>8.1f} "
              f"{1000 * r['train_seconds'] / r['tokens']:>8.2f} {r['tokens'] / first['tokens']:>8.2f} "
              f"{r['train_seconds'] / first['train_seconds']:>7.2f} {r['wall_seconds'] - r['train_seconds']:>10.1f}")
    last = rows[-1]
    per_token = [r["train_seconds"] / r["tokens"] for r in rows]
    print(f"seconds per token, 16x vs 1x: {per_token[-1] / per_token[0]:.2f} (1.00 = exactly linear); "
          f"16x trained {last['tokens'] / first['tokens']:.1f}x the tokens in "
          f"{last['train_seconds'] / first['train_seconds']:.1f}x the time")
    # time = fixed + per_token x tokens, least squares over the sizes: linear growth leaves small residuals
    xs, ys = [r["tokens"] for r in rows], [r["train_seconds"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    fixed = my - slope * mx
    worst = max(abs(fixed + slope * x - y) / y for x, y in zip(xs, ys, strict=True))
    print(f"least-squares line: {fixed:.1f} s + {1000 * slope:.2f} s per 1k tokens; largest residual "
          f"{100 * worst:.1f}% of a run's time (the fixed part is the first step's warm-up)")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
