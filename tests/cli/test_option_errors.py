"""Every command that validates its options against a config section words a bad option as the same
mistake made in an experiment file: the field's dotted path, then (in place of the file's line) the
option that set it, then what was expected and what was found; exit 2, nothing written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import load_config

CASES = {
    "data prepare --dedup": (["data", "prepare", "{inp}", "-o", "{out}", "--dedup", "fuzzy", "--min-chars", "-1"],
                             ["data.dedup (--dedup): must be one of 'none', 'exact' or 'near', got 'fuzzy'",
                              "data.clean.min_chars (--min-chars): must be >= 0, got -1"]),
    "data prepare --split": (["data", "prepare", "{inp}", "-o", "{out}", "--split", "0.5,0.1"],
                             ["data.split (--split): split ratios must sum to 1, got 0.6"]),
    "rag index": (["rag", "index", "{docs}", "--out", "{out}", "--chunk-tokens", "0"],
                  ["rag.chunk_tokens (--chunk-tokens): must be > 0, got 0"]),
    "eval": (["eval", "--data", "{inp}", "--max-new-tokens", "0", "--judge", "openai:j@http://127.0.0.1:9/v1",
              "--judge-concurrency", "0"],
             ["eval.max_new_tokens (--max-new-tokens): must be > 0, got 0",
              "eval.judge.concurrency (--judge-concurrency): must be > 0, got 0"]),
    "data synth": (["data", "synth", "{docs}", "--teacher", "openai:t@http://127.0.0.1:9/v1", "--out", "{out}",
                    "--per-chunk", "0", "--concurrency", "0", "--min-overlap", "2"],
                   ["synth.per_chunk (--per-chunk): must be > 0, got 0",
                    "synth.teacher.concurrency (--concurrency): must be > 0, got 0",
                    "synth.filters.min_overlap (--min-overlap): must be <= 1, got 2.0"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_option_is_reported_like_a_bad_config_value(case, tmp_path):
    args, expected = CASES[case]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\nSome text.\n")
    (tmp_path / "in.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    paths = {"inp": str(tmp_path / "in.jsonl"), "out": str(tmp_path / "out"), "docs": str(tmp_path / "docs")}
    result = CliRunner().invoke(app, [a.format(**paths) for a in args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: options: {len(expected)} error(s)\n"), result.output
    for line in expected:
        assert f"  {line}\n" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_the_same_mistake_in_a_file_reads_the_same_but_for_the_line(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\neval:\n  max_new_tokens: 0\n")
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert "  eval.max_new_tokens (line 3): must be > 0, got 0\n" in result.output
    with pytest.raises(Exception, match=r"eval.max_new_tokens \(line 3\): must be > 0, got 0"):
        load_config(path)
