"""Label accuracy of the handbook ticket classifier before and after its GRPO stage (examples/handbook/grpo.yaml).

Scores two adapters of a staged run on the held-out tickets (the run's validation split): the SFT stage's
and the final one (SFT then GRPO). The property GRPO targets is the label reward: the completion, stripped
and case-folded, is exactly the ticket's queue. Reported for greedy decoding (accuracy, binomial standard
error) and for sampling at temperature 1 (mean reward of 8 samples per ticket, standard error over tickets),
with the paired difference per ticket.

    .venv/bin/python bench/grpo_labels.py runs/handbook-grpo
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _se(values: list[float]) -> float:
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from peft import PeftModel

    from tunelab.data.prepare import load_split
    from tunelab.models.generate import GenerationConfig, Generator
    from tunelab.models.loading import load_model, load_tokenizer

    lineage = json.loads((args.run_dir / "lineage.json").read_text())
    base_name = lineage["base_model"]
    sft_dir = args.run_dir / lineage["stages"][0]["dir"]
    records = [r for r in load_split(sft_dir / "data", "validation") if r.kind == "label"]
    prompts = [[{"role": "user", "content": r.text}] for r in records]
    labels = [r.label.strip().casefold() for r in records]
    tokenizer = load_tokenizer(base_name)
    scores = {}
    for name, adapter in (("sft", sft_dir), ("sft+grpo", args.run_dir)):
        model = PeftModel.from_pretrained(load_model(base_name, dtype="float32"), str(adapter)).eval()
        gen = Generator(model, tokenizer, threads=args.threads)
        greedy = gen.generate(prompts, GenerationConfig(max_new_tokens=8, batch_size=32))
        sampled = gen.generate([p for p in prompts for _ in range(args.samples)],
                               GenerationConfig(max_new_tokens=8, temperature=1.0, seed=11, batch_size=64))
        hit = [float(o.text.strip().casefold() == y) for o, y in zip(greedy, labels, strict=True)]
        mean = [sum(float(sampled[i * args.samples + k].text.strip().casefold() == y) for k in range(args.samples))
                / args.samples for i, y in enumerate(labels)]
        scores[name] = (hit, mean)
        print(f"{name:<9} greedy accuracy {sum(hit) / len(hit):.3f} +- {_se(hit):.3f}   sampled reward "
              f"{sum(mean) / len(mean):.3f} +- {_se(mean):.3f}   ({len(labels)} held-out tickets)")
    for i, what in enumerate(("greedy accuracy", "sampled reward")):
        diff = [b - a for a, b in zip(scores["sft"][i], scores["sft+grpo"][i], strict=True)]
        print(f"paired change in {what}: {sum(diff) / len(diff):+.3f} +- {_se(diff):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
