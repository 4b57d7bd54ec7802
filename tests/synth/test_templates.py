"""Prompt templates: every bundled one loads with its version and placeholders; user overrides win;
broken files are reported by path and line."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.synth.generate import MODES
from tunelab.synth.templates import bundled_names, load_template

TEMPLATE = """version: mine/7
about: a test prompt
[system]
Be terse.
[user]
Write $n items about: $text
"""


def test_every_bundled_prompt_loads_with_a_version_and_its_placeholders():
    names = bundled_names()
    assert set(MODES) | {"paraphrase", "judge_grounding", "judge_label"} <= set(names)
    for name in MODES:
        t = load_template(name, required=MODES[name].placeholders)
        assert t.version == f"{name}/1" and t.bundled and len(t.sha256) == 64
        conv = t.render(text="CHUNK TEXT", source="doc.md > A", n=2, turns=3, labels="a, b")
        # system, a worked example (user + assistant), then the real request with the chunk in it
        assert [m["role"] for m in conv] == ["system", "user", "assistant", "user"]
        assert "CHUNK TEXT" in conv[-1]["content"] and "doc.md > A" in conv[-1]["content"]
        assert "$" not in conv[-1]["content"]
        assert t.describe() == {"version": f"{name}/1", "sha256": t.sha256, "file": "bundled"}


def test_user_directory_overrides_by_name_and_falls_back_for_the_rest(tmp_path):
    (tmp_path / "qa.txt").write_text(TEMPLATE)
    mine = load_template("qa", tmp_path, required=("text", "n"))
    assert mine.version == "mine/7" and not mine.bundled and mine.describe()["file"] == str(tmp_path / "qa.txt")
    assert mine.render(text="T", n=3) == [{"role": "system", "content": "Be terse."},
                                          {"role": "user", "content": "Write 3 items about: T"}]
    assert load_template("preference", tmp_path).bundled
    with pytest.raises(TunelabError, match="not found"):
        load_template("qa", tmp_path / "nope")


def test_broken_templates_are_reported_by_file(tmp_path):
    cases = {
        "no_version.txt": ("[system]\nx\n[user]\n$text $n\n", "missing a 'version:' line"),
        "no_user.txt": ("version: a/1\n[system]\nx\n", r"missing \[user\]"),
        "prose.txt": ("version: a/1\nthis line has no colon\n[system]\nx\n[user]\ny\n", "prose.txt:2: expected 'key: value'"),
        "half_example.txt": ("version: a/1\n[system]\nx\n[example_user]\nq\n[user]\n$text $n\n", "go together"),
        "twice.txt": ("version: a/1\n[system]\nx\n[system]\ny\n[user]\nz\n", "twice.txt:4: section \\[system\\] appears twice"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(TunelabError, match=message):
            load_template(name[:-4], tmp_path)
    (tmp_path / "qa.txt").write_text("version: a/1\n[system]\nx\n[user]\nWrite $n questions.\n")
    with pytest.raises(TunelabError, match=r"must use \$text"):
        load_template("qa", tmp_path, required=("text", "n"))
    (tmp_path / "qa.txt").write_text("version: a/1\n[system]\nx\n[user]\n$text costs $5\n")
    with pytest.raises(TunelabError, match=r"\$\$ for a literal dollar"):
        load_template("qa", tmp_path).render(text="t")
    (tmp_path / "qa.txt").write_text("version: a/1\n[system]\nx\n[user]\n$text $unknown\n")
    with pytest.raises(TunelabError, match=r"no value for placeholder \$unknown"):
        load_template("qa", tmp_path).render(text="t")


def test_the_judge_prompts_show_one_example_reply_that_their_schema_accepts():
    from tunelab.llm import parse_reply
    from tunelab.synth.judge import LabelVerdict, Verdict
    from tunelab.synth.templates import load_template as load

    for name, schema in (("judge_grounding", Verdict), ("judge_label", LabelVerdict)):
        user = load(name).user
        example = user[user.rindex("Example reply:"):]
        assert parse_reply(example[example.index("{"):], schema)[1] is None, name
