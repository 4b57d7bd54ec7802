"""export.merge: a run's adapter merged into its base, as a model directory plain transformers loads, carrying
the run's exact chat template and stop tokens; what cannot be merged, and output directory ownership.

Tolerance for "merged equals base + adapter": both in float32, the merge adds each update to its weight
once, so logits agree to float32 rounding; atol/rtol 1e-5 is ~100x the differences seen (~1e-7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_runs import train_tiny_run

from tunelab.errors import TunelabError
from tunelab.export.merge import MANIFEST, merge_run
from tunelab.export.source import load_trained, read_run

# a ChatML variant that differs from the base model's template, so the test sees which template travels
RUN_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 2, 30]])


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def lora_run(train_model_dir, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("merge-runs")
    template = workdir / "template.jinja"
    template.write_text(RUN_TEMPLATE, encoding="utf-8")
    torch.set_num_threads(1)
    return train_tiny_run(train_model_dir, workdir, "lora", chat_template=template)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_lora_merge_equals_base_plus_adapter_and_loads_with_plain_transformers(lora_run, train_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "merged"
    result = merge_run(lora_run, out)

    trained, run_tok = load_trained(read_run(lora_run))
    base = AutoModelForCausalLM.from_pretrained(train_model_dir)
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no PEFT, no tunelab
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert not torch.allclose(_logits(trained), _logits(base), atol=1e-3)  # the adapter does change outputs
    torch.testing.assert_close(_logits(merged), _logits(trained), atol=1e-5, rtol=1e-5)

    # the exact template training rendered with (the run's override, not the base model's), and its stop token
    assert (lora_run / "chat_template.jinja").read_text() == RUN_TEMPLATE
    assert AutoTokenizer.from_pretrained(out).chat_template == RUN_TEMPLATE
    assert AutoTokenizer.from_pretrained(train_model_dir).chat_template != RUN_TEMPLATE
    im_end = run_tok.convert_tokens_to_ids("<|im_end|>")
    assert GenerationConfig.from_pretrained(out).eos_token_id == im_end

    assert result.dtype == "float32" and next(merged.parameters()).dtype == torch.float32
    assert not result.dequantized
    # merge_run verifies by default, and the manifest records the verdict
    assert result.verify is not None and result.verify.verdict == "pass", result.verify.reasons
    assert result.verify.artifact == out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["verify"]["verdict"] == "pass" and manifest["dtype"] == "float32"
    assert manifest["source_run"] == str(lora_run.resolve()) and manifest["method"] == "lora"
    assert manifest["base"] == str(train_model_dir) and manifest["base_public_id"] is None


def test_bfloat16_merge_is_saved_and_verified_in_bfloat16(lora_run, tmp_path):
    result = merge_run(lora_run, tmp_path / "bf16", dtype="bfloat16")
    assert result.dtype == "bfloat16"
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert result.verify.precision == "bfloat16" and result.verify.verdict == "pass", result.verify.reasons
    with pytest.raises(TunelabError, match="unknown dtype 'int8'"):
        merge_run(lora_run, tmp_path / "x", dtype="int8")


def test_dora_merges_too(train_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = train_tiny_run(train_model_dir, tmp_path, "dora", steps=2)
    merge_run(run_dir, tmp_path / "merged", verify=False)
    trained, _ = load_trained(read_run(run_dir))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(_logits(merged), _logits(trained), atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "merged" / MANIFEST).read_text().count('"verdict"')  # --no-verify: none recorded


def test_qlora_is_merged_in_full_precision_and_says_so(lora_run, tmp_path):
    # A QLoRA run is a LoRA adapter whose config says method qlora (trained on the base in 4-bit NF4); the
    # LoRA run relabelled stands in for one, without paying for bitsandbytes here (tests/train trains qlora).
    run_dir = tmp_path / "qlora-run"
    shutil.copytree(lora_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "data"))
    config = run_dir / "config.resolved.yaml"
    config.write_text(config.read_text().replace("  name: lora\n", "  name: qlora\n", 1))
    assert read_run(run_dir).quantized
    result = merge_run(run_dir, tmp_path / "merged")
    assert result.dequantized and result.dtype == "float32"
    said = " ".join(result.messages)
    assert "4-bit" in said and "full precision" in said and "loses" in said
    assert json.loads((tmp_path / "merged" / MANIFEST).read_text())["dequantized"] is True
    assert result.verify.verdict == "pass", result.verify.reasons


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_prompt_and_prefix_tuning_cannot_be_merged(method, train_model_dir, tmp_path):
    run_dir = train_tiny_run(train_model_dir, tmp_path, method, steps=1, num_virtual_tokens=4)
    with pytest.raises(TunelabError, match="cannot be merged") as err:
        merge_run(run_dir, tmp_path / "merged")
    assert "tunelab serve" in str(err.value) and "--adapter" in str(err.value)
    assert "tunelab eval" in str(err.value)
    assert not (tmp_path / "merged").exists()


def test_a_foreign_output_directory_is_refused_and_an_earlier_merge_replaced(lora_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(TunelabError, match="tunelab did not write"):
        merge_run(lora_run, mine, verify=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(TunelabError, match="inside the output directory"):
        merge_run(lora_run, lora_run.parent, verify=False)  # the run itself would be replaced

    out = tmp_path / "merged"
    merge_run(lora_run, out, verify=False)
    (out / "stale.txt").write_text("from the first merge")
    merge_run(lora_run, out, verify=False)  # its own earlier output: replaced whole
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_a_run_directory_is_required(tmp_path):
    with pytest.raises(TunelabError, match="no config.resolved.yaml"):
        merge_run(tmp_path, tmp_path / "out")
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "config.resolved.yaml").write_text("model:\n  name: x\nmethod:\n  name: lora\n")
    with pytest.raises(TunelabError, match="has training finished"):
        merge_run(broken, tmp_path / "out")
    shutil.rmtree(broken)


def test_merged_dir_carries_its_own_card(lora_run, tmp_path):
    out = tmp_path / "merged"
    merge_run(lora_run, out, verify=False)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---") and "library_name: transformers" in card and "lora" in card.lower()


def test_export_gguf_from_a_run_merges_writes_the_modelfile_and_verifies(lora_run, tmp_path):
    from tunelab.export.to_gguf import export_gguf

    done = export_gguf(lora_run, tmp_path / "tuned.gguf", quant="f32")
    assert done.verify is not None and done.verify.passed, done.verify.reasons
    assert done.gguf.chat_template == RUN_TEMPLATE  # the run's template, not the base model's
    assert done.modelfile is not None and 'PARAMETER stop "<|im_end|>"' in done.modelfile.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned.Modelfile", "tuned.gguf", "tuned.gguf.tunelab.json"]
