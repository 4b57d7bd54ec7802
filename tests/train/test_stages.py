"""Sequential stages: causal on documents then SFT on Q&A, each stage starting from the previous one's
weights; lineage, the final artifact, resume skipping finished stages, merges when methods differ, and
config errors inside stages with their line numbers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tunelab.config import load_config
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import read_jsonl
from tunelab.train import run

from .conftest import write_text_corpus

FAST = {"max_steps": 3, "batch_size": 4}


@pytest.fixture
def spy_loop(monkeypatch):
    """The trainable weights each stage's loop starts from, in stage order."""
    import importlib

    run_module = importlib.import_module("tunelab.train.single")  # where one stage's loop runs
    starts: list[dict[str, torch.Tensor]] = []
    original = run_module.run_loop

    def spy(setup, state):
        starts.append({n: p.detach().to("cpu", copy=True) for n, p in setup.params.items()})
        return original(setup, state)

    monkeypatch.setattr(run_module, "run_loop", spy)
    return starts


def _adapter_file(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def _as_params(saved: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT saves adapter weights without the adapter name; the live parameters carry '.default'."""
    return {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): v
            for k, v in saved.items()}


def _handbook(root) -> str:
    """A directory of raw documents (what a team has before any dataset exists)."""
    root.mkdir()
    (root / "leave.md").write_text("# Leave\n\nEmployees get 25 days of paid leave per year. " * 6, encoding="utf-8")
    (root / "it.txt").write_text("The IT helpdesk resets passwords. Call extension 4455. " * 8, encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG not a document")
    return str(root)


def _staged(make_config, tmp_path, name="staged", docs=None, **stage_overrides):
    docs = docs or str(write_text_corpus(tmp_path / "docs.jsonl"))
    stages = [{"name": "docs", "data": {"train": [docs]}, "train": {"objective": "causal"}},
              {"name": "qa", **stage_overrides}]
    return make_config(name, train=FAST, stages=stages)


def test_causal_on_documents_then_sft_continues_the_adapter(make_config, tmp_path, spy_loop):
    config = _staged(make_config, tmp_path, docs=_handbook(tmp_path / "handbook"))
    assert [s.train.objective for s in config.stages] == ["causal", "sft"]
    assert config.stages[1].data.train == config.data.train  # inherited from the top level
    result = run(config, progress=False)
    run_dir = result.run_dir
    assert result.status == "completed"

    lineage = json.loads((run_dir / "lineage.json").read_text())
    first, second = lineage["stages"]
    assert (first["name"], first["objective"], first["start"]["kind"]) == ("docs", "causal", "base")
    assert (second["name"], second["objective"], second["start"]["kind"]) == ("qa", "sft", "continue")
    assert second["start"]["adapter"] == "stages/0-docs"
    assert second["start"]["weights_sha256"] == first["end_weights_sha256"] != first["start"]["weights_sha256"]
    assert first["dataset_hash"] != second["dataset_hash"]
    assert all(s["status"] == "completed" and s["final_train_loss"] is not None for s in lineage["stages"])
    assert lineage["final"]["kind"] == "adapter"

    # the raw documents became one text record each, the unreadable file is reported, not dropped silently
    records = read_jsonl(run_dir / "stages/0-docs/data-documents/documents.jsonl")
    assert sorted(r["source"] for r in records) == ["it.txt", "leave.md"]
    docs_summary = json.loads((run_dir / "stages/0-docs/summary.json").read_text())
    assert any("logo.png skipped" in w for w in docs_summary["warnings"])
    assert docs_summary["data"]["train"]["examples"] >= 2  # long documents are cut into windows, not truncated

    # stage 2's loop started from exactly the weights stage 1 saved
    stage1 = _as_params(_adapter_file(run_dir / "stages/0-docs"))
    assert len(spy_loop) == 2 and spy_loop[1].keys() == stage1.keys()
    for name, tensor in stage1.items():
        assert torch.equal(spy_loop[1][name], tensor), name
    assert any(not torch.equal(spy_loop[0][n], stage1[n]) for n in stage1)  # stage 1 did train

    # the final artifact is the last stage's adapter, loadable on the raw base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    final = _adapter_file(run_dir)
    stage2 = _adapter_file(run_dir / "stages/1-qa")
    assert final.keys() == stage2.keys() and all(torch.equal(final[k], stage2[k]) for k in final)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config.model.name), str(run_dir))
    live = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    assert all(torch.equal(live[n], t) for n, t in _as_params(stage2).items())

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6 and [s["name"] for s in summary["stages"]] == ["docs", "qa"]
    assert summary["objective"] == "sft" and summary["artifact"]["kind"] == "adapter"
    log = read_jsonl(run_dir / "train_log.jsonl")
    steps = [r for r in log if "loss" in r and "event" not in r]
    assert [(r["stage"], r["step"], r["global_step"]) for r in steps] == [
        ("docs", 1, 1), ("docs", 2, 2), ("docs", 3, 3), ("qa", 1, 4), ("qa", 2, 5), ("qa", 3, 6)]


def test_resume_skips_a_completed_stage(make_config, tmp_path):
    config = _staged(make_config, tmp_path, name="resumed")

    def crash(event):
        if event.get("stage") == "qa" and event["event"] == "step" and event["step"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, callback=crash, progress=False)
    stage1_summary = config.run_dir / "stages/0-docs/summary.json"
    stamp = stage1_summary.stat().st_mtime_ns
    with pytest.raises(TunelabError, match="--resume"):
        run(config, progress=False)

    events: list[dict] = []
    result = run(config, resume=True, callback=events.append, progress=False)
    assert result.status == "completed"
    stage_events = [(e["name"], e["status"]) for e in events if e["event"] == "stage"]
    assert stage_events == [("docs", "skipped"), ("qa", "started")]
    assert all(e.get("stage") == "qa" for e in events if e["event"] == "step")
    assert stage1_summary.stat().st_mtime_ns == stamp  # stage 1 was not trained again
    lineage = json.loads((config.run_dir / "lineage.json").read_text())
    assert [s["skipped_on_resume"] for s in lineage["stages"]] == [True, False]
    assert lineage["stages"][1]["start"]["weights_sha256"] == lineage["stages"][0]["end_weights_sha256"]

    # a finished stage whose config changed is not silently reused
    changed = _staged(make_config, tmp_path, name="resumed")
    changed.stages[0].train.lr = 5e-3
    with pytest.raises(TunelabError, match="train.lr"):
        run(changed, resume=True, progress=False)


def test_a_different_method_starts_from_the_merged_adapter(make_config, tmp_path, spy_loop):
    config = _staged(make_config, tmp_path, name="merged", method={"name": "full"}, train={"lr": 1e-4})
    result = run(config, progress=False)
    run_dir = result.run_dir
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["stages"][1]["start"]["kind"] == "merged"
    assert lineage["final"]["kind"] == "full"
    merged_dir = run_dir / "stages/0-docs/merged"
    merged = load_file(str(merged_dir / "model.safetensors"))
    # the full stage's loop started from the merged weights (base + stage-1 adapter)
    start = spy_loop[1]
    for name, tensor in merged.items():
        assert torch.equal(start[name], tensor), name
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(config.model.name).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter really was merged in
    final = AutoModelForCausalLM.from_pretrained(run_dir)
    trained = {k: v.cpu() for k, v in result.model.state_dict().items()}
    assert all(torch.equal(final.state_dict()[k], trained[k]) for k in (q, "model.norm.weight"))


def test_an_impossible_chain_fails_before_training(make_config, tmp_path):
    config = _staged(make_config, tmp_path, name="bad-chain", method={"name": "lora"})
    config.stages[0].method.name = "prompt"
    with pytest.raises(TunelabError, match=r"stages\[1\] \(qa\): a prompt-tuning stage cannot be followed"):
        run(config, progress=False)
    assert not (config.run_dir / "stages").exists()


def test_config_errors_inside_stages_name_the_path_and_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: demo\n"              # 1
        "train:\n"                  # 2
        "  lr: -1\n"                # 3
        "stages:\n"                 # 4
        "  - name: docs\n"          # 5
        "    train:\n"              # 6
        "      objective: causal\n"  # 7
        "      lr: 0\n"             # 8
        "  - name: qa\n"            # 9
        "    train:\n"              # 10
        "      epocs: 2\n"          # 11
        "    method: {name: lorra}\n"  # 12
        "  - name: bad/name\n",     # 13
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        "train.lr (line 3): must be > 0, got -1",  # inherited by stage qa: reported once, where it is written
        "stages[0].train.lr (line 8): must be > 0, got 0",
        "stages[1].train.epocs (line 11): unknown key; did you mean 'epochs'?",
        "stages[1].method.name (line 12): must be one of 'full', 'lora', 'dora', 'qlora', 'ia3', 'prompt' or "
        "'prefix', got 'lorra'",
        "stages[2].name (line 13): must be usable as a directory name, got 'bad/name'",
    ]


def test_stage_paths_resolve_against_the_config_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: demo\ndata: {train: qa.jsonl}\nstages:\n  - {name: docs, data: {train: docs.jsonl}}\n"
                    "  - {name: qa}\n", encoding="utf-8")
    config = load_config(path)
    assert config.stages[0].data.train == [tmp_path / "docs.jsonl"]
    assert config.stages[1].data.train == [tmp_path / "qa.jsonl"]


def test_overrides_reach_into_stages(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: demo\ntrain: {lr: 0.001}\nstages:\n  - {name: docs, train: {objective: causal}}\n"
                    "  - {name: qa}\n", encoding="utf-8")
    config = load_config(path, ["stages.1.train.lr=0.0005", "train.epochs=2"])
    assert [s.train.lr for s in config.stages] == [0.001, 0.0005]
    assert [s.train.epochs for s in config.stages] == [2, 2]  # a top-level override is inherited
    with pytest.raises(TunelabError, match="'5' is not an index of that list"):
        load_config(path, ["stages.5.train.lr=1"])
