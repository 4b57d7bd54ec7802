"""Nothing a user made is lost: every command that writes a directory (data prepare, data synth, rag index,
train, eval --out, run and compare) refuses a folder that is not its own earlier output, leaves it
byte-identical and exits non-zero with a message naming it; its own earlier output is replaced (or
written into) as before. The one shared rule is tunelab.io.check_output_dir (tests/test_io.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import teacher_server as teacher
import yaml
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.errors import TunelabError
from tunelab.io import output_kind

runner = CliRunner()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _foreign(path: Path) -> dict[str, bytes]:
    """A user's folder with a file in it; returns its exact contents."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.md").write_text("my own notes, not tunelab's\n")
    return _tree(path)


def _refused(result, folder: Path, before: dict[str, bytes]) -> None:
    assert result.exit_code != 0, result.output
    assert str(folder) in result.output and "Traceback" not in result.output
    assert "nothing was changed" in result.output
    assert _tree(folder) == before


def _chat_rows(n: int, first: int = 0) -> str:
    return "".join(json.dumps({"messages": [{"role": "user", "content": f"What is code {i}?"},
                                            {"role": "assistant", "content": f"Code {i} is {i * 7}."}]}) + "\n"
                   for i in range(first, first + n))


def test_data_prepare_never_deletes_the_folder_holding_its_input(tmp_path):
    # the reported case: `tunelab data prepare data/train.jsonl --out data` deleted data/ with the input
    data = tmp_path / "data"
    _foreign(data)
    (data / "train.jsonl").write_text(_chat_rows(12))
    before = _tree(data)
    result = runner.invoke(app, ["data", "prepare", str(data / "train.jsonl"), "--out", str(data)])
    _refused(result, data, before)
    assert "lies inside the output directory" in result.output

    other = tmp_path / "other"
    mine = _foreign(other)
    result = runner.invoke(app, ["data", "prepare", str(data / "train.jsonl"), "--out", str(other)])
    _refused(result, other, mine)
    assert "holds files tunelab did not write" in result.output

    out = tmp_path / "prepared"
    for _ in range(2):  # its own earlier output is replaced
        result = runner.invoke(app, ["data", "prepare", str(data / "train.jsonl"), "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
    assert output_kind(out) == "prepare" and (out / "manifest.json").is_file()


def test_data_synth_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
    server = teacher.start()
    try:
        teacher.write_docs(tmp_path / "docs", sections=2)
        args = ["data", "synth", str(tmp_path / "docs"), "--teacher", f"openai:teacher@{server.base_url}",
                "--cache-dir", str(tmp_path / "cache"), "--min-chunk-tokens", "5", "--per-chunk", "2"]
        mine = tmp_path / "mine"
        before = _foreign(mine)
        result = runner.invoke(app, [*args, "--out", str(mine)])
        _refused(result, mine, before)
        assert len(server.requests) == 0  # refused before any teacher call
        out = tmp_path / "out"
        for _ in range(2):
            result = runner.invoke(app, [*args, "--out", str(out), "--json"])
            assert result.exit_code == 0, result.output
        assert output_kind(out) == "synth" and (out / "train.jsonl").is_file()
        prepared = tmp_path / "prepared"
        assert runner.invoke(app, ["data", "prepare", str(out / "train.jsonl"), "--out", str(prepared)]).exit_code == 0
        result = runner.invoke(app, [*args, "--out", str(prepared)])  # a prepared dataset is not a synth output
        assert result.exit_code != 0 and "another kind (prepare, not synth)" in result.output
        assert output_kind(prepared) == "prepare"
    finally:
        server.stop()


def test_rag_index_refuses_a_foreign_folder_and_updates_its_own(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Parking\n\nPermits cost 15 pounds a month and are issued by reception.\n")
    mine = tmp_path / "mine"
    before = _foreign(mine)
    result = runner.invoke(app, ["rag", "index", str(docs), "--out", str(mine)])
    _refused(result, mine, before)
    # a prepared dataset has a manifest.json too, which once passed for an index
    (tmp_path / "train.jsonl").write_text(_chat_rows(12))
    prepared = tmp_path / "prepared"
    assert runner.invoke(app, ["data", "prepare", str(tmp_path / "train.jsonl"), "--out", str(prepared)]).exit_code == 0
    before = _tree(prepared)
    result = runner.invoke(app, ["rag", "index", str(docs), "--out", str(prepared)])
    _refused(result, prepared, before)
    assert "another kind (prepare, not rag-index)" in result.output
    out = tmp_path / "index"
    for _ in range(2):
        result = runner.invoke(app, ["rag", "index", str(docs), "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
    assert output_kind(out) == "rag-index"


def _experiment(tmp_path: Path, model_dir: Path, name: str, **extra) -> Path:
    (tmp_path / "train.jsonl").write_text(_chat_rows(16))
    (tmp_path / "eval.jsonl").write_text(_chat_rows(3, first=100))
    config = {"name": name, "workdir": str(tmp_path / "runs"), "model": {"name": str(model_dir)},
              "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_length": 64},
              "train": {"epochs": 1, "batch_size": 4, "max_steps": 1}, "tracking": {"enabled": False},
              "eval": {"metrics": ["token_f1"], "max_new_tokens": 2, "batch_size": 4}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_refuses_a_foreign_run_directory_and_reuses_its_own(tmp_path, tiny_model_dir):
    cfg = _experiment(tmp_path, tiny_model_dir, "mine")
    mine = tmp_path / "runs" / "mine"
    before = _foreign(mine)
    _refused(runner.invoke(app, ["train", str(cfg)]), mine, before)
    _refused(runner.invoke(app, ["train", str(cfg), "--dry-run"]), mine, before)
    own = _experiment(tmp_path, tiny_model_dir, "fresh")
    for _ in range(2):
        result = runner.invoke(app, ["train", str(own), "--dry-run", "--json"])
        assert result.exit_code == 0, result.output
    assert output_kind(tmp_path / "runs" / "fresh") == "run"


def test_run_and_compare_refuse_a_foreign_run_directory(tmp_path, tiny_model_dir):
    cfg = _experiment(tmp_path, tiny_model_dir, "mine", compare={"train": False, "rag": "off"})
    mine = tmp_path / "runs" / "mine"
    before = _foreign(mine)
    _refused(runner.invoke(app, ["run", str(cfg)]), mine, before)
    _refused(runner.invoke(app, ["compare", str(cfg)]), mine, before)


def test_run_never_moves_aside_a_foreign_model_directory(tmp_path):
    # a changed training key moves the old run aside as <model>.replaced-<time>: only a run of tunelab's
    from tunelab.io import claim_output_dir
    from tunelab.pipeline import _train_status

    mine = tmp_path / "train" / "model"
    before = _foreign(mine)
    with pytest.raises(TunelabError, match="holds files tunelab did not write"):
        _train_status(mine, "key")
    assert _tree(mine) == before and sorted(p.name for p in mine.parent.iterdir()) == ["model"]
    ours = claim_output_dir(tmp_path / "train" / "ours", "run")
    (ours / "summary.json").write_text("{}")
    assert _train_status(ours, "key") == "fresh"
    assert not ours.exists() and len(list(ours.parent.glob("ours.replaced-*"))) == 1


def test_eval_out_refuses_a_foreign_folder_and_writes_into_its_own(tmp_path, tiny_model_dir):
    data = tmp_path / "eval.jsonl"
    data.write_text(_chat_rows(2))
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--metrics", "token_f1",
            "--max-new-tokens", "2"]
    mine = tmp_path / "mine"
    before = _foreign(mine)
    _refused(runner.invoke(app, [*args, "--out", str(mine)]), mine, before)
    out = tmp_path / "out"
    for _ in range(2):
        result = runner.invoke(app, [*args, "--out", str(out), "--json"])
        assert result.exit_code == 0, result.output
    assert output_kind(out) == "eval" and (out / "generation" / "predictions.jsonl").is_file()
