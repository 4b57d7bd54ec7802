"""The main job's reuse keys follow content: the trained model's key (pipeline.train_key), each variant's
eval cache key (compare.evaluate.variant_key) and the forgetting check's key (compare.forgetting.check_key).

For each: nothing changed gives the same key (the step is reused); changing one input, in place under
the same path and with its old modification time put back, gives another (the step runs again).
tests/pipeline/test_run_pipeline.py shows the whole job rerunning when the base model's weights change.
"""

from __future__ import annotations

import json
import shutil

import pytest
from content_edits import nudge_weights, rewrite_keeping_mtime

from tunelab.compare.evaluate import records_hash, variant_key
from tunelab.compare.forgetting import check_key
from tunelab.compare.variants import Variant
from tunelab.config import validate_data
from tunelab.data.records import Record
from tunelab.pipeline import train_key


@pytest.fixture
def setup(tmp_path, train_model_dir):
    model = tmp_path / "model"
    shutil.copytree(train_model_dir, model)
    (tmp_path / "train.jsonl").write_text('{"prompt": "q", "completion": "a"}\n')
    (tmp_path / "template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"adapter weights")

    def config(**model):
        return validate_data({"name": "keys", "workdir": str(tmp_path / "runs"),
                              "model": {"name": str(tmp_path / "model"), "device": "cpu",
                                        "chat_template": str(tmp_path / "template.jinja"), **model},
                              "data": {"train": [str(tmp_path / "train.jsonl")]}})

    return tmp_path, config


def _train(config) -> str:
    return train_key(config, "dataset-hash")


def test_train_key_follows_every_input_by_content(setup, monkeypatch):
    root, config = setup
    key = _train(config())
    assert _train(config()) == key  # nothing changed: reused
    assert train_key(config(), "another-dataset") != key

    nudge_weights(root / "model")
    assert _train(config()) != key
    key = _train(config())

    rewrite_keeping_mtime(root / "template.jinja", b"{{ messages[0]['content'] }} changed template")
    assert _train(config()) != key
    key = _train(config())

    rewrite_keeping_mtime(root / "train.jsonl", b'{"prompt": "Q", "completion": "A"}\n')
    assert _train(config()) != key
    key = _train(config())

    assert _train(config(dtype="bfloat16")) != key
    monkeypatch.setattr("tunelab.models.loading.resolve_device", lambda device="cpu": "cuda")
    assert _train(config()) != key  # another kind of device


def test_variant_key_follows_base_weights_template_adapter_and_records(setup):
    root, config = setup
    records = [Record("chat", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])]
    base = Variant(str(root / "model"), "base", False)
    tuned = Variant(str(root / "model"), "tuned", False, root / "adapter")

    def keys(**changes):
        cfg = config(**changes)
        return [variant_key(cfg, v, records_hash(records), None)["hash"] for v in (base, tuned)]

    first = keys()
    assert keys() == first  # nothing changed: both cached predictions are reused

    nudge_weights(root / "model")  # the base model's weights, same path: both variants are stale
    second = keys()
    assert second[0] != first[0] and second[1] != first[1]

    rewrite_keeping_mtime(root / "template.jinja", b"{{ messages[0]['content'] }} changed template")
    third = keys()
    assert third[0] != second[0] and third[1] != second[1]

    # an adapter's alpha scales its weights without changing them
    (root / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 16}))
    fourth = keys()
    assert fourth[0] == third[0] and fourth[1] != third[1]

    assert keys(dtype="bfloat16") != fourth
    records[0].messages[1]["content"] = "another reference"
    assert keys() != fourth
    # labelled records are decoded under the label set's grammar: predictions made without it are stale
    assert variant_key(config(), base, records_hash(records), None, labelled=True)["hash"] != keys()[0]


def test_forgetting_check_key_follows_the_benchmark_file_and_base_weights(setup, monkeypatch):
    from tunelab.evaluate.benchmarks.registry import ENV_DIR, get_benchmark

    root, config = setup
    bench_dir = root / "benchmarks"
    bench_dir.mkdir()
    monkeypatch.setenv(ENV_DIR, str(bench_dir))
    data = bench_dir / get_benchmark("truthfulqa_mc1").filenames[0]
    data.write_text('{"question": "q1"}\n')
    tuned = Variant(str(root / "model"), "tuned", False, root / "adapter")

    def key(**kw):
        return check_key(config(), tuned, ["truthfulqa_mc1"], kw.get("limit", 10), kw.get("batch_size", 16))

    first = key()
    assert key() == first
    assert key(limit=20) != first and key(batch_size=32) != first
    rewrite_keeping_mtime(data, b'{"question": "q2"}\n')
    second = key()
    assert second != first
    nudge_weights(root / "model")
    assert key() != second
