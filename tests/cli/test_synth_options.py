"""`tunelab data synth` takes its defaults from the config schema: every option is unset unless given,
an unset option gets the synth section's default (or the experiment file's value), and --help shows
the schema's default, so the command line and the schema cannot drift apart."""

from __future__ import annotations

import pytest
import typer
from pydantic_core import PydanticUndefined
from typer.testing import CliRunner

from tunelab.cli import app, synth_cmd
from tunelab.config import SynthConfig
from tunelab.errors import TunelabError

TEACHER = "openai:t@http://127.0.0.1:9/v1"
NOT_FIELDS = {"--config", "--set", "--json", "--help"}


def _command():
    return next(c for c in typer.main.get_command(app).commands["data"].commands.values() if c.name == "synth")


def test_every_option_is_a_schema_field_unset_by_default_with_the_schema_default_in_its_help():
    options = {p.opts[0]: p for p in _command().params if p.opts[0].startswith("--")}
    table = {flag: field for flag, field in synth_cmd.OPTIONS.values()}
    assert set(options) - NOT_FIELDS == set(table)  # no option sets a synth field around the table
    assert CliRunner().invoke(app, ["data", "synth", "--help"]).exit_code == 0
    for flag, field in table.items():
        assert options[flag].default in (None, False), flag  # unset: the file's or the schema's value applies
        default = synth_cmd.schema_default(field)
        if default not in (None, [], PydanticUndefined) and flag != "--no-cache":
            assert options[flag].help.endswith(f" (default: {default})."), flag  # what --help prints
    # the ones re-declared before, in the schema's words now
    assert synth_cmd.schema_default("per_chunk") == SynthConfig.model_fields["per_chunk"].default == 3


@pytest.fixture
def seen(monkeypatch):
    """The SynthConfig the command would run (the run itself is stopped)."""
    configs: list[SynthConfig] = []

    def fake_run(cfg, **_kw):
        configs.append(cfg)
        raise TunelabError("stopped by the test")

    monkeypatch.setattr("tunelab.synth.run.run", fake_run)
    return configs


def test_unset_options_give_the_schema_defaults(tmp_path, seen):
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path), "--teacher", TEACHER, "--out", str(tmp_path / "o")])
    assert "stopped by the test" in result.output
    assert seen[0] == SynthConfig(docs=tmp_path, teacher=TEACHER, out=tmp_path / "o")


def test_options_override_the_file_and_unset_ones_keep_its_values(tmp_path, seen):
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: x\ntracking: {{enabled: false}}\nsynth:\n  docs: docs\n  teacher: {{spec: '{TEACHER}', "
                    "concurrency: 2}\n  per_chunk: 5\n")
    CliRunner().invoke(app, ["data", "synth", "--config", str(path), "--chunk-tokens", "128", "--timeout", "9"])
    cfg = seen[0]
    assert (cfg.per_chunk, cfg.teacher.concurrency) == (5, 2)  # from the file
    assert (cfg.chunk_tokens, cfg.teacher.timeout_s) == (128, 9.0)  # from the options
    assert cfg.chunk_overlap == SynthConfig.model_fields["chunk_overlap"].default  # from the schema
