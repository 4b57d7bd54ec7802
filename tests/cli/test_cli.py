"""The CLI in-process: help everywhere, --json prints one object, user errors exit non-zero cleanly."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()


def test_help_on_every_command():
    for args in ([], ["config"], ["data"], ["models"], ["data", "prepare"], ["config", "validate"], ["quickstart"],
                 ["run"], ["compare"], ["rag"], ["runs"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_config_validate_and_show(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: demo\ntrain: {lr: 0.001}\n")
    result = runner.invoke(app, ["config", "validate", str(cfg), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["valid"] is True
    result = runner.invoke(app, ["config", "show", str(cfg), "--json", "--set", "train.epochs=1"])
    data = json.loads(result.stdout)
    assert data["train"]["epochs"] == 1 and data["train"]["lr"] == 0.001


def test_config_errors_exit_non_zero_without_traceback(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: demo\ntrain:\n  lr: -1\n")
    result = runner.invoke(app, ["config", "validate", str(cfg)])
    assert result.exit_code == 2
    assert "train.lr (line 3): must be > 0, got -1" in result.output
    assert "Traceback" not in result.output


def test_data_prepare_json_and_bad_input(tmp_path):
    good = tmp_path / "d.jsonl"
    rows = [{"instruction": f"Say the number {i} in words", "input": "", "output": f"The number is {i}."} for i in range(20)]
    good.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = runner.invoke(app, ["data", "prepare", str(good), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["splits"]["train"] + data["splits"]["validation"] == 20
    assert (tmp_path / "out" / "manifest.json").is_file()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": ""}\n')
    result = runner.invoke(app, ["data", "prepare", str(bad), "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2
    assert f"{bad}:1" in result.output and "output" in result.output
    assert not (tmp_path / "out2").exists()

    result = runner.invoke(app, ["data", "prepare", str(good), "--out", str(tmp_path / "o3"), "--split", "0.5,0.6"])
    assert result.exit_code == 2 and "sum to 1" in result.output


def test_data_prepare_field_mapping(tmp_path):
    faq = tmp_path / "faq.csv"
    faq.write_text("q,a\n" + "".join(f"Question {i}?,Answer {i}.\n" for i in range(10)) + "Last?,\n")
    args = ["data", "prepare", str(faq), "--out", str(tmp_path / "out"), "--field", "prompt=q", "--field", "completion=a"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"{faq}:12: field 'a': missing required field (read as 'completion')" in result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, [*args, "--skip-invalid", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["skipped_invalid"] == {"missing_field": 1} and sum(data["splits"].values()) == 10
    for field, message in [
        ("promt=q", "data.fields (--field): unknown field 'promt' (in promt: q); did you mean 'prompt'?"),
        ("prompt", "--field 'prompt': give FORMAT_FIELD=YOUR_FIELD"),
    ]:
        result = runner.invoke(app, ["data", "prepare", str(faq), "--out", str(tmp_path / "o2"), "--field", field])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def _tiny_experiment(tmp_path, tiny_model_dir) -> str:
    rows = [
        {"messages": [{"role": "user", "content": f"What is code {i}?"}, {"role": "assistant", "content": f"Code {i} is {i * 7}."}]}
        for i in range(16)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"name: tiny\nworkdir: {tmp_path / 'runs'}\nmodel: {{name: {tiny_model_dir}}}\n"
        f"data: {{train: {data}, max_length: 64}}\ntrain: {{epochs: 1, batch_size: 4, lr: 0.01}}\n"
    )
    return str(cfg)


def test_train_dry_run_and_run_with_overrides(tmp_path, tiny_model_dir):
    cfg = _tiny_experiment(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["train", cfg, "method.r=4", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["plan"]
    assert plan["trainable_params"] > 0
    result = runner.invoke(app, ["train", cfg, "method.r=4", "train.max_steps=2", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["status"] == "completed"
    assert (tmp_path / "runs" / "tiny" / "adapter_config.json").is_file()
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # the run is tracked (tracking.enabled defaults on)
    # a second run into the same directory must not silently overwrite it
    result = runner.invoke(app, ["train", cfg, "train.max_steps=2"])
    assert result.exit_code == 2 and "--resume" in result.output
