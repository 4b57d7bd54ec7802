"""`tunelab ui` and `tunelab review export` parse, default safely and fail clearly."""

from __future__ import annotations

from typer.testing import CliRunner

from tunelab.cli import app as cli_app
from tunelab.cli import ui_cmd
from tunelab.compare.comparison import Comparison
from tunelab.review import RatingStore


def test_ui_binds_loopback_and_keeps_ratings_in_the_workdir(workdir, monkeypatch):
    started = {}
    monkeypatch.setattr(ui_cmd, "_run_server", lambda app, host, port: started.update(app=app, host=host, port=port))
    res = CliRunner().invoke(cli_app, ["ui", str(workdir), "--port", "9123"])
    assert res.exit_code == 0, res.output
    assert (started["host"], started["port"]) == ("127.0.0.1", 9123)
    assert started["app"].state.store.display_url == f"sqlite:///{workdir.resolve() / 'review.db'}"
    assert (workdir / "review.db").is_file()


def test_ui_and_export_errors_are_clear(tmp_path, workdir):
    runner = CliRunner()
    res = runner.invoke(cli_app, ["ui", str(tmp_path / "missing")])
    assert res.exit_code != 0 and "not a directory" in res.output
    res = runner.invoke(cli_app, ["review", "export", str(workdir), "-o", str(tmp_path / "x.jsonl"), "-f", "csv"])
    assert res.exit_code != 0 and "--format" in res.output and not (tmp_path / "x.jsonl").exists()
    res = runner.invoke(cli_app, ["review", "export", str(workdir), "-o", str(tmp_path / "y.jsonl"),
                                  "--db", "postgresql://ana:hunter2secret@db.invalid:1/r"])
    assert res.exit_code != 0 and "hunter2secret" not in res.output and not (tmp_path / "y.jsonl").exists()


def test_store_refuses_a_bad_url(tmp_path):
    import pytest

    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="not a database URL"):
        RatingStore("not a url")
    with pytest.raises(TunelabError, match="does not exist"):
        RatingStore(f"sqlite:///{tmp_path}/no/such/dir/r.db")


def test_comparison_reads_back_from_its_json(workdir):
    import json

    data = json.loads((workdir / "exp" / "compare" / "comparison.json").read_text())
    assert Comparison.from_dict(data).to_dict() == data
