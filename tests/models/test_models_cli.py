"""`tunelab models ...` run in-process with typer's CliRunner."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from tunelab.cli import models_cmd

root = typer.Typer()
root.add_typer(models_cmd.app, name="models")
runner = CliRunner()


def test_list_json(tunelab_home):
    result = runner.invoke(root, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["models"]] == ["smollm2-135m-instruct", "gemma3-270m"]


def test_list_table(tunelab_home):
    result = runner.invoke(root, ["models", "list"])
    assert result.exit_code == 0 and "gemma3-270m" in result.stdout


def test_info_json(tiny_model_dir):
    result = runner.invoke(root, ["models", "info", str(tiny_model_dir), "--seq-len", "64", "--batch", "2",
                                  "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["architecture"] == "LlamaForCausalLM" and data["memory"]["settings"]["batch"] == 2
    assert data["chat_template"]["name"] == "chatml"


def test_info_table(tiny_model_dir):
    result = runner.invoke(root, ["models", "info", str(tiny_model_dir)])
    assert result.exit_code == 0 and "Training memory estimate" in result.stdout


def test_info_unknown_hub_id_offline(tunelab_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(root, ["models", "info", "nosuch-org/nosuch-model", "--json"])
    assert result.exit_code == 2
    assert result.stdout == "" and "nosuch-org/nosuch-model" in result.stderr


def test_pull_local_dir_is_in_place(tiny_model_dir):
    result = runner.invoke(root, ["models", "pull", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["already_pulled"] and data["path"] == str(tiny_model_dir.resolve())


def test_pull_gguf_then_cached(tiny_gguf, tunelab_home):
    first = json.loads(runner.invoke(root, ["models", "pull", str(tiny_gguf), "--json"]).stdout)
    second = json.loads(runner.invoke(root, ["models", "pull", str(tiny_gguf), "--json"]).stdout)
    assert not first["already_pulled"] and second["already_pulled"] and first["path"] == second["path"]
    assert first["template"]["name"] == "chatml" and len(first["gguf_sha256"]) == 64
