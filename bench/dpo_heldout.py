"""Held-out preference numbers of an sft -> dpo staged run (examples/handbook/preference.yaml): the SFT
stage's model (before DPO) against the final one (after), on the DPO stage's validation pairs.

Printed, each with a 95% bootstrap interval over the pairs (seeded):
- log p(chosen) - log p(rejected) under each model, and the share of pairs whose chosen reply is the more
  likely one (what a user would call "prefers the right answer");
- the implicit DPO reward margin beta x ((after - reference) on chosen - (after - reference) on rejected),
  with the reference the run stored (the SFT model, reference_logps.json), and its accuracy (chance 0.5).

    .venv/bin/python bench/dpo_heldout.py runs/handbook-preference [--beta 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _interval(values, rng, draws: int = 10_000) -> str:
    import numpy as np

    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(draws)]
    return f"{values.mean():.3f} [{np.percentile(means, 2.5):.3f}, {np.percentile(means, 97.5):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="the staged run (its stages/ holds the sft and dpo stages)")
    parser.add_argument("--beta", type=float, default=None, help="default: the dpo stage's train.preference.beta")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch
    import yaml
    from peft import PeftModel

    from tunelab.data.prepare import load_split
    from tunelab.models.loading import load_model, load_tokenizer
    from tunelab.train.batching import Layout
    from tunelab.train.loss import loss_head
    from tunelab.train.preference import build_pairs, sequence_logps

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = sorted(p for p in (args.run_dir / "stages").iterdir() if p.is_dir())
    configs = {p: yaml.safe_load((p / "config.resolved.yaml").read_text()) for p in stages}
    dpo = next(p for p in stages if configs[p]["train"]["objective"] == "dpo")
    before = stages[stages.index(dpo) - 1]
    resolved = configs[dpo]
    beta = args.beta if args.beta is not None else resolved["train"]["preference"]["beta"]
    model_name = resolved["model"]["name"]
    tokenizer = load_tokenizer(model_name)
    pairs, _ = build_pairs(load_split(dpo / "data", "validation"), tokenizer, resolved["data"]["max_length"])
    layout = Layout(packing=False, capacity=resolved["data"]["max_length"], pad_id=tokenizer.pad_token_id or 0)

    def logps(adapter: Path):
        model = PeftModel.from_pretrained(load_model(model_name, dtype="float32"), str(adapter)).eval()
        rows = []
        with loss_head(model) as head, torch.no_grad():
            for pair in pairs:
                values, _ = sequence_logps(head, [pair.chosen, pair.rejected], layout, "cpu")
                rows.append(values.tolist())
        return np.array(rows)

    sft, final = logps(before), logps(args.run_dir)
    reference = np.array(json.loads((dpo / "reference_logps.json").read_text())["val"])
    rng = np.random.default_rng(0)
    print(f"{args.run_dir}: {len(pairs)} held-out pairs, beta {beta}; the stored reference (computed in the run's "
          f"precision) differs from the SFT model here (fp32) by at most {np.abs(reference - sft).max():.2f} nats")
    for name, lp in ((f"before DPO ({before.name})", sft), ("after DPO", final)):
        margin = lp[:, 0] - lp[:, 1]
        print(f"{name}: log p(chosen) - log p(rejected) {_interval(margin, rng)}; chosen more likely "
              f"{_interval((margin > 0).astype(float), rng)}")
    reward = beta * ((final[:, 0] - reference[:, 0]) - (final[:, 1] - reference[:, 1]))
    print(f"after DPO: implicit reward margin {_interval(reward, rng)}; reward accuracy "
          f"{_interval((reward > 0).astype(float), rng)} (chance 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
