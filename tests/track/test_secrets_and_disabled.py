"""End to end: secrets in the config, the environment, params, tags, artifacts and errors never reach
the MLflow store (every byte of the database and the artifact directory is searched); and a disabled
tracker imports nothing from MLflow and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunelab.track import Tracker, step_callback

OPENAI_KEY = "sk-proj-Zx81Qw72Er63Ty54Ui45Op36"
HF_KEY = "hf_Qm9Wn8Eb7Rv6Tc5Yx4Uz3Ia2Os1Pd0Lk"
ODD_KEY = "odd-shaped-judge-credential-4711"  # no known shape; found because the config names its variable
URL_PASSWORD = "url-pass-7781"
INLINE = "inline-param-credential-99"
BEARER = "b3arer.T0ken-xyz_98765"
SECRETS = [OPENAI_KEY, HF_KEY, ODD_KEY, URL_PASSWORD, INLINE, BEARER]


def _store_bytes(workdir: Path) -> dict[str, bytes]:
    """Every file of the store: the database (and any journal next to it) and all artifacts."""
    return {str(p): p.read_bytes() for p in workdir.rglob("*") if p.is_file()}


def test_secrets_never_reach_the_store(make_config, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("HF_TOKEN", HF_KEY)
    monkeypatch.setenv("JUDGE_CRED", ODD_KEY)
    config = make_config(eval={"judge": {
        "spec": f"openai:gpt-4o-mini@https://alice:{URL_PASSWORD}@judge.example.com/v1",
        "api_key_env": "JUDGE_CRED",
    }})
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "predictions.jsonl").write_text(json.dumps(
        {"prompt": "q", "prediction": f"the key is {ODD_KEY}", "meta": {"api_key": INLINE}}) + "\n")
    (outputs / "report.html").write_text(f"<p>called with {OPENAI_KEY} and Authorization: Bearer {BEARER}</p>")
    (outputs / "weights.bin").write_bytes(b"\x00\x01binary")

    tracker = Tracker.from_config(config)
    with tracker.run("eval", params={"teacher": {"api_key": INLINE, "base_url": f"https://u:{URL_PASSWORD}@h/v1"}},
                     tags={"note": f"Bearer {BEARER}", "echo": ODD_KEY}) as run:
        run.log_metrics({"score": 1.0})
        run.log_text(f"env had {HF_KEY} and {ODD_KEY}", "notes/log.txt")
        run.log_dict({"hf_token": HF_KEY, "nested": {"password": "whatever"}, "ok": "kept"}, "extra.yaml")
        run.log_artifact(outputs / "predictions.jsonl")
        run.log_artifacts(outputs, artifact_path="compare")
        step_callback(run)({"event": "step", "step": 1, "loss": 1.0})
    with pytest.raises(RuntimeError), tracker.run("train") as failed:
        raise RuntimeError(f"backend refused key {ODD_KEY}")

    files = _store_bytes(workdir)
    assert any(name.endswith("mlflow.db") for name in files) and len(files) > 5
    for name, data in files.items():
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} leaked into {name}"

    # and the store still says what it can: masks in place, variable names kept, binaries intact
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    got = client.get_run(run.id).data
    assert got.params["teacher.api_key"] == "***" and got.params["eval.judge.api_key_env"] == "JUDGE_CRED"
    assert got.params["eval.judge.spec"] == "openai:gpt-4o-mini@https://alice:***@judge.example.com/v1"
    assert got.tags["note"] == "Bearer ***" and got.tags["echo"] == "***"
    root = workdir / "mlartifacts" / run.id / "artifacts"
    assert "hf_token: '***'" in (root / "extra.yaml").read_text() and "ok: kept" in (root / "extra.yaml").read_text()
    assert (root / "compare" / "weights.bin").read_bytes() == b"\x00\x01binary"
    assert "the key is ***" in (root / "predictions.jsonl").read_text()
    assert client.get_run(failed.id).data.tags["tunelab.error"] == "RuntimeError: backend refused key ***"


_DISABLED = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from tunelab.config import validate_data
    from tunelab.track import Tracker, step_callback

    work = Path(sys.argv[1])
    cfg = validate_data({"name": "demo", "workdir": str(work), "tracking": {"enabled": False}})
    tracker = Tracker.from_config(cfg)
    with tracker.run("train", params={"a": 1}, tags={"b": 2}) as run:
        run.log_params({"x": {"y": 1}})
        run.log_metrics({"m": 1.0}, step=1)
        run.set_tags({"t": "v"})
        run.log_artifact(work / "predictions.jsonl")
        run.log_artifacts(work, artifact_path="a")
        run.log_text("x", "a.txt")
        run.log_dict({"k": 1}, "d.json")
        callback = step_callback(run)
        callback({"event": "step", "step": 1, "loss": 1.0})
        callback({"event": "end"})
    try:
        with tracker.run("eval") as failing:
            raise ValueError("propagates")
    except ValueError:
        pass
    mods = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
    print(json.dumps({"mlflow": mods, "id": run.id, "enabled": tracker.enabled, "ui": tracker.ui_command}))
""")


def test_disabled_tracker_imports_nothing_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", _DISABLED, str(work)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"mlflow": [], "id": None, "enabled": False, "ui": None}
    assert not work.exists()
    assert list(tmp_path.iterdir()) == []  # nothing in the working directory either (no ./mlruns)
