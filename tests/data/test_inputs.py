"""A directory `tunelab data synth` wrote stands for its files (tunelab.data.inputs); the whole synth run
into `data prepare` and training is in tests/synth/test_modes_http.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.inputs import expand_inputs, synth_manifest
from tunelab.errors import TunelabError


def synth_dir(root: Path, how: str = "held_out", eval_file: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text('{"text": "t"}\n', encoding="utf-8")
    if eval_file:
        (root / "eval.jsonl").write_text('{"text": "e"}\n', encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps({"tunelab_synth": 1, "eval_set": {"how": how}}), encoding="utf-8")
    return root


def test_only_a_synth_manifest_makes_a_synth_directory(tmp_path):
    out = synth_dir(tmp_path / "out")
    assert synth_manifest(out)["eval_set"] == {"how": "held_out"}
    (out / "manifest.json").write_text('{"tunelab_dataset": 1}', encoding="utf-8")
    assert synth_manifest(out) is None
    (out / "manifest.json").write_text("not json", encoding="utf-8")
    assert synth_manifest(out) is None
    assert synth_manifest(tmp_path / "missing") is None


def test_expansion_of_train_and_eval(tmp_path):
    held, para = synth_dir(tmp_path / "held"), synth_dir(tmp_path / "para", how="paraphrase")
    plain = tmp_path / "plain.jsonl"
    assert expand_inputs([plain, held], None) == ([plain, held / "train.jsonl"], held / "eval.jsonl")
    assert expand_inputs([para], None) == ([para / "train.jsonl"], None)
    mine = tmp_path / "mine.jsonl"
    assert expand_inputs([held], mine) == ([held / "train.jsonl"], mine)  # a named eval file wins
    other = synth_dir(tmp_path / "other")
    with pytest.raises(TunelabError, match="2 synth outputs each hold a held-out eval set .* --eval"):
        expand_inputs([held, other], None)
    assert expand_inputs([held, other], mine)[1] == mine
    (held / "train.jsonl").unlink()
    with pytest.raises(TunelabError, match="held: a `tunelab data synth` output without train.jsonl"):
        expand_inputs([held], None)
