"""The main job's forgetting stage: which data files it passes on, and when it reuses a verdict."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.compare import forgetting
from tunelab.compare.variants import Variant
from tunelab.config import ExperimentConfig

SLICE = Path(__file__).parents[1] / "evaluate" / "benchmark_slices" / "truthfulqa_mc.jsonl"


def test_named_data_file_is_used_and_a_changed_one_reruns_the_check(tmp_path, monkeypatch, tiny_model_dir):
    data = tmp_path / "tqa.jsonl"
    data.write_text("".join(SLICE.read_text().splitlines(keepends=True)[:4]))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    config = ExperimentConfig.model_validate({
        "name": "f", "workdir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
        "eval": {"benchmarks": ["truthfulqa_mc1"], "benchmark_paths": {"truthfulqa_mc1": str(data)}, "limit": 2},
    })
    calls = []

    def fake_baseline(model, tokenizer, names, *, limit, batch_size, paths, out_dir, progress=None):
        calls.append(dict(paths))
        result = {"changes": [{"benchmark": names[0], "run": len(calls)}]}
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "baseline.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr("tunelab.evaluate.baseline.run_baseline", fake_baseline)
    monkeypatch.setattr("tunelab.compare.evaluate._load", lambda config, model, weights: ("model", "tokenizer"))
    base = str(tiny_model_dir)  # the key covers the base model's content too
    variants = [Variant(base, "tuned", False, adapter), Variant(base, "tuned", True, adapter)]
    first = forgetting.run_checks(config, variants, lambda _s: None)
    assert calls == [{"truthfulqa_mc1": data}]  # once: retrieval does not change the weights
    assert forgetting.run_checks(config, variants, lambda _s: None) == first and len(calls) == 1  # reused
    data.write_text("".join(SLICE.read_text().splitlines(keepends=True)[4:8]))  # same name, new content
    again = forgetting.run_checks(config, variants, lambda _s: None)
    assert len(calls) == 2 and list(again.values())[0][0]["run"] == 2
