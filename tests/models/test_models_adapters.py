"""Adapter checks on tiny models: wrong base, weights that load nowhere, untrained adapters, the CLI message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.models.adapters import apply_adapter, load_with_adapter

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def make_adapter(model_dir: Path, out: Path, *, trained: bool = True, seed: int = 0) -> Path:
    """A LoRA adapter saved by PEFT for the model in model_dir; `trained` fills B with random values
    (as training would), otherwise B stays at PEFT's zero initialisation."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(_load(model_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                        task_type="CAUSAL_LM"))
    if trained:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def wide_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Same vocabulary and module names as the tiny model, hidden size 64 instead of 32."""
    from transformers import AutoConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("wide-llama")
    for f in tiny_model_dir.iterdir():
        if f.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(f, out / f.name)
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.hidden_size, cfg.intermediate_size = 64, 128
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def test_trained_adapter_loads_and_changes_outputs(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "ad")
    model, report = apply_adapter(_load(tiny_model_dir), adapter, base_name="tiny")
    assert report.changes_outputs and report.max_logit_change > 0
    assert report.warnings == []
    assert report.peft_type == "LORA" and report.tensors == 8  # 2 layers x (q, v) x (A, B)
    assert type(model).__name__ == "PeftModelForCausalLM"


def test_adapter_for_another_hidden_size_is_a_clear_error(tiny_model_dir, wide_model_dir, tmp_path):
    adapter = make_adapter(wide_model_dir, tmp_path / "wide-adapter")
    with pytest.raises(TunelabError) as exc:
        apply_adapter(_load(tiny_model_dir), adapter, base_name="tiny-base")
    msg = str(exc.value)
    assert f"adapter {adapter} does not fit base model tiny-base" in msg
    assert "size mismatch" in msg
    assert f"trained on {wide_model_dir}" in msg


def test_renamed_adapter_keys_are_an_error_not_a_silent_base_model(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(tiny_model_dir, tmp_path / "renamed")
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    save_file({k.replace(".layers.", ".blocks."): v for k, v in tensors.items()}, str(file))
    # PEFT itself only warns here, and the model would be the base model plus zero LoRA deltas.
    with pytest.raises(TunelabError) as exc:
        apply_adapter(_load(tiny_model_dir), adapter, base_name="tiny")
    msg = str(exc.value)
    assert "did not load into base model tiny" in msg
    assert "8 of the 8 tensors in the adapter file match no module" in msg
    assert "8 adapter weights the base model needs are not in the file" in msg
    assert "score like the base model" in msg


def test_adapter_missing_some_weights_is_an_error(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(tiny_model_dir, tmp_path / "partial")
    file = adapter / "adapter_model.safetensors"
    tensors = load_file(str(file))
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, str(file))
    with pytest.raises(TunelabError, match="4 adapter weights the base model needs are not in the file"):
        apply_adapter(_load(tiny_model_dir), adapter, base_name="tiny")


def test_untrained_lora_warns_that_it_scores_like_the_base(tiny_model_dir, tmp_path):
    adapter = make_adapter(tiny_model_dir, tmp_path / "zero", trained=False)
    _, report = apply_adapter(_load(tiny_model_dir), adapter, base_name="tiny")
    assert report.changes_outputs is False and report.max_logit_change == 0.0
    assert len(report.warnings) == 1
    assert "every LoRA B matrix is exactly zero" in report.warnings[0] and "untrained" in report.warnings[0]


def test_missing_adapter_files_are_clear_errors(tiny_model_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TunelabError, match="no adapter_config.json"):
        load_with_adapter(str(tiny_model_dir), empty)
    adapter = make_adapter(tiny_model_dir, tmp_path / "noweights")
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(TunelabError, match="no adapter weights"):
        apply_adapter(_load(tiny_model_dir), adapter, base_name="tiny")


def test_eval_cli_reports_the_mismatch_and_the_untrained_warning(tiny_model_dir, wide_model_dir, tmp_path):
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hello"},
                                             {"role": "assistant", "content": "world"}]}) + "\n")
    runner = CliRunner()
    wide = make_adapter(wide_model_dir, tmp_path / "wide")
    res = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--adapter", str(wide), "--data", str(data),
                              "--max-new-tokens", "2", "--json"])
    assert res.exit_code == 2
    assert "does not fit base model" in res.output and "Traceback" not in res.output

    zero = make_adapter(tiny_model_dir, tmp_path / "zero", trained=False)
    res = runner.invoke(app, ["eval", "--model", str(tiny_model_dir), "--adapter", str(zero), "--data", str(data),
                              "--metrics", "exact_match", "--max-new-tokens", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["adapter"]["changes_outputs"] is False
    assert "untrained" in out["warnings"][0]
