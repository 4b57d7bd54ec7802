"""export.verify: the parity check passes an honest export and catches the failures users report most (a
changed stop token, a changed chat template, weights that are not the trained ones), for a merged
directory and for a GGUF (written here the way llama.cpp lays one out; the bundled SmolLM2 GGUF in the
slow test)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny_gguf import write_tiny_gguf
from tiny_runs import train_tiny_run
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.export.merge import merge_run
from tunelab.export.verify import PROMPTS, verify

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def merged(train_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, its merged model directory, not verified)."""
    workdir = tmp_path_factory.mktemp("verify-runs")
    torch.set_num_threads(1)
    run_dir = train_tiny_run(train_model_dir, workdir, "lora")
    out = workdir / "merged"
    merge_run(run_dir, out, verify=False)
    return run_dir, out


def _copy(merged_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(merged_dir, target)
    return target


def test_an_honest_merge_passes(merged):
    run_dir, out = merged
    result = verify(run_dir, out, prompts=PROMPTS[:2], max_new_tokens=8)
    assert result.verdict == "pass", result.reasons
    assert result.agreement == 1.0 and all(c.agree for c in result.prompts)
    assert result.max_logit_diff <= result.prompts[0].limit and result.precision == "float32"
    assert result.differences == [] and result.prompt_source == "prompts given by the caller"


def test_a_changed_stop_token_fails_and_is_named(merged, tmp_path):
    run_dir, out = merged
    artifact = _copy(out, tmp_path)
    honest = verify(run_dir, out, prompts=PROMPTS[:1], max_new_tokens=4)
    trained = honest.prompts[0]
    if trained.trained_finish == "stop" and not trained.trained_tokens:
        # the trained model answers with <|im_end|> at once: an artifact whose eos is another token never
        # stops there (the "rambles on" failure)
        wrong_id = json.loads((artifact / "tokenizer.json").read_text())["model"]["vocab"].get("hello", 5)
    else:
        # the artifact ends generation on the trained model's first answer token (the "stops early" failure)
        wrong_id = trained.trained_tokens[0]
    config = json.loads((artifact / "generation_config.json").read_text())
    config["eos_token_id"] = wrong_id
    (artifact / "generation_config.json").write_text(json.dumps(config))

    result = verify(run_dir, artifact, prompts=PROMPTS[:1], max_new_tokens=4)
    assert result.verdict == "fail"
    assert [d.what for d in result.differences] == ["stop token ids"]
    assert any(r.startswith("stop token ids differs") for r in result.reasons)
    check = result.prompts[0]
    assert not check.agree and (check.trained_finish, check.trained_tokens) != (check.artifact_finish,
                                                                                check.artifact_tokens)
    assert "stops differently at output token 0" in check.note
    assert any("greedy outputs differ" in r for r in result.reasons)


def test_a_changed_eos_in_the_tokenizer_fails_and_is_named(merged, tmp_path):
    run_dir, out = merged
    artifact = _copy(out, tmp_path)
    config = json.loads((artifact / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (artifact / "tokenizer_config.json").write_text(json.dumps(config))
    result = verify(run_dir, artifact, prompts=PROMPTS[:1], max_new_tokens=2)
    assert result.verdict == "fail"
    named = {d.what for d in result.differences}
    assert "eos token" in named
    assert any("eos token differs" in r and "<|endoftext|>" in r for r in result.reasons)


def test_a_changed_chat_template_fails_and_is_named(merged, tmp_path):
    run_dir, out = merged
    artifact = _copy(out, tmp_path)
    template = (artifact / "chat_template.jinja").read_text()
    (artifact / "chat_template.jinja").write_text(template.replace("<|im_start|>assistant", "<|im_start|>bot"))
    result = verify(run_dir, artifact, prompts=PROMPTS[:1], max_new_tokens=2)
    assert result.verdict == "fail"
    assert [d.what for d in result.differences] == ["chat template"]
    assert "chat template differs: first change at character" in result.reasons[0]
    assert not result.prompts[0].same_prompt_tokens and not result.prompts[0].agree


def test_weights_that_are_not_the_trained_ones_fail_on_logits(merged, train_model_dir, tmp_path):
    run_dir, _ = merged
    base_only = tmp_path / "base"
    shutil.copytree(train_model_dir, base_only)  # the base without the adapter, same tokenizer and template
    (base_only / "chat_template.jinja").write_text((run_dir / "chat_template.jinja").read_text())
    result = verify(run_dir, base_only, prompts=PROMPTS[:1], max_new_tokens=4)
    assert result.verdict == "fail"
    assert any("largest logit difference" in r for r in result.reasons)


def test_a_gguf_is_loaded_back_and_compared(merged, tmp_path):
    run_dir, out = merged
    template = (run_dir / "chat_template.jinja").read_text()
    good = write_tiny_gguf(out, tmp_path / "merged.F32.gguf", template)
    result = verify(run_dir, good, prompts=PROMPTS[:2], max_new_tokens=8)
    assert (result.artifact_kind, result.engine, result.precision) == ("gguf", "transformers", "float32")
    assert result.verdict == "pass", result.reasons
    assert result.agreement == 1.0 and result.max_logit_diff < 1e-4

    other = write_tiny_gguf(out, tmp_path / "other.F32.gguf", template.replace("assistant", "model"))
    result = verify(run_dir, other, prompts=PROMPTS[:1], max_new_tokens=2)
    assert result.verdict == "fail" and [d.what for d in result.differences] == ["chat template"]


def test_verify_refuses_what_it_cannot_compare(merged, tmp_path):
    run_dir, _ = merged
    with pytest.raises(TunelabError, match="no such artifact"):
        verify(run_dir, tmp_path / "missing")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(TunelabError, match="not an artifact verify can read"):
        verify(run_dir, tmp_path / "model.bin")


def test_cli_merge_and_verify_print_the_verdict_and_exit_non_zero_on_fail(merged, tmp_path):
    run_dir, out = merged
    result = runner.invoke(app, ["export", "merge", str(run_dir), "--out", str(tmp_path / "m"), "--no-verify",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verify"] is None and data["dtype"] == "float32"

    artifact = _copy(out, tmp_path)
    (artifact / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    result = runner.invoke(app, ["export", "verify", str(run_dir), "--artifact", str(artifact),
                                 "--max-new-tokens", "2"])
    assert result.exit_code == 1
    assert "verdict: FAIL" in result.stdout and "chat template differs" in result.stdout

    result = runner.invoke(app, ["export", "verify", str(run_dir), "--artifact", str(out), "--max-new-tokens",
                                 "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["verdict"] == "pass"


@pytest.mark.slow
def test_the_bundled_smollm2_gguf_verifies_against_its_own_base(tmp_path):
    """The real llama-architecture GGUF with its chat template: a run whose adapter changes nothing (LoRA B
    is zero) is the base itself, which tunelab converted from this very GGUF, so it must pass."""
    from peft import LoraConfig, get_peft_model

    from tunelab.models.bundled import find_bundled
    from tunelab.models.loading import load_model
    from tunelab.models.registry import model_path

    name = "smollm2-135m-instruct"
    bundled = find_bundled(name)
    gguf = bundled.locate_gguf(tmp_path / "scratch")  # installed by `make test`: a missing model is a failure
    run_dir = tmp_path / "run"
    get_peft_model(load_model(name, dtype="float32", device="cpu"),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(run_dir)
    for file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(model_path(name)) / file, run_dir / file)
    (run_dir / "config.resolved.yaml").write_text(f"model:\n  name: {name}\nmethod:\n  name: lora\n")

    result = verify(run_dir, gguf, prompts=PROMPTS[:2], max_new_tokens=8)
    assert result.artifact_kind == "gguf" and result.precision == "quantized"  # Q4_1
    assert result.verdict == "pass", result.reasons
    assert result.differences == [] and result.agreement == 1.0
