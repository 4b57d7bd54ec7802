"""`tunelab export hub`: the adapter (or a merged model) and its card are staged locally, then uploaded in one
commit; without a token, offline or without network nothing is sent, the error says what to do, and the
staged files stay. Uploads go to a small Hub on loopback (tests/support/fake_hub.py) speaking the
endpoints huggingface_hub uses for small files."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from fake_hub import FakeHub
from tiny_runs import SMOLLM2_ID, converted_base, write_config
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.errors import TunelabError
from tunelab.export.card import CARD_MARKER
from tunelab.export.hub import push, stage
from tunelab.io import OUTPUT_MARKER

TOKEN = "hf_" + "t" * 34
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                 "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, train_model_dir) -> Path:
    import torch

    tmp = tmp_path_factory.mktemp("hub-run")
    base = converted_base(train_model_dir, tmp / "smollm2-converted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = CliRunner().invoke(app, ["train", str(write_config(tmp, base)), "--json"])
    finally:
        torch.set_num_threads(threads)
    assert out.exit_code == 0, out.output
    return Path(json.loads(out.stdout)["run_dir"])


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A private copy: each test stages into it."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def hub():
    server = FakeHub(TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1 (tests/conftest.py); these tests talk to loopback only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))


def _staged(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != OUTPUT_MARKER)


def test_upload_is_one_commit_of_exactly_the_staged_files(run_dir, hub, online):
    result = push(run_dir, "me/faq-lora", token=TOKEN, endpoint=hub.url, private=True)
    assert (result.kind, result.repo, result.files) == ("adapter", "me/faq-lora", ADAPTER_FILES)
    assert hub.repos == {"me/faq-lora": {"private": True, "type": "model"}}
    (commit,) = hub.commits
    staged = result.staged
    assert staged == run_dir / "hub-staging" and _staged(staged) == ADAPTER_FILES
    assert sorted(commit["files"]) == ADAPTER_FILES  # the marker and the run's logs, data, checkpoints: not sent
    for name in ADAPTER_FILES:
        assert commit["files"][name] == (staged / name).read_bytes(), name
    assert commit["files"]["adapter_model.safetensors"] == (run_dir / "adapter_model.safetensors").read_bytes()
    card = commit["files"]["README.md"].decode()
    assert CARD_MARKER in card and f"base_model: {SMOLLM2_ID}" in card
    assert 'PeftModel.from_pretrained(base, "me/faq-lora")' in card
    assert json.loads(commit["files"]["adapter_config.json"])["base_model_name_or_path"] == SMOLLM2_ID
    assert result.commit and result.url.endswith(result.commit)
    assert [p for _, p in hub.requests].count("/api/models/me/faq-lora/commit/main") == 1
    # a second push to the existing repo: another single commit, the staging directory replaced whole
    again = push(run_dir, "me/faq-lora", token=TOKEN, endpoint=hub.url)
    assert len(hub.commits) == 2 and again.staged == staged


def test_without_a_token_nothing_is_sent_and_the_files_stay_staged(run_dir, hub, no_login, online, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    out = CliRunner().invoke(app, ["export", "hub", str(run_dir), "--repo", "me/faq-lora"])
    assert out.exit_code == 2
    message = " ".join(out.output.split())
    assert "found no Hugging Face token" in message and "HF_TOKEN" in message and "hf auth login" in message
    assert "Nothing was sent" in message
    assert f"hf upload me/faq-lora {run_dir / 'hub-staging'} . --exclude {OUTPUT_MARKER}" in message
    assert hub.requests == []
    assert _staged(run_dir / "hub-staging") == ADAPTER_FILES
    assert CARD_MARKER in (run_dir / "hub-staging" / "README.md").read_text()


def test_without_network_the_error_is_clear_and_the_files_stay(run_dir, tmp_path, online, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    stage_dir = tmp_path / "staged"
    out = CliRunner().invoke(app, ["export", "hub", str(run_dir), "--repo", "me/faq-lora", "--stage-dir",
                                   str(stage_dir), "--private", "--json"])
    assert out.exit_code == 2 and out.stdout == ""
    message = " ".join(out.output.split())
    assert "the Hub could not be reached" in message and "Nothing was committed" in message
    assert f"hf upload me/faq-lora {stage_dir} . --exclude {OUTPUT_MARKER} --private" in message
    assert TOKEN not in out.output
    assert _staged(stage_dir) == ADAPTER_FILES


def test_offline_mode_sends_nothing(run_dir, hub):
    with pytest.raises(TunelabError, match="offline mode is on") as err:
        push(run_dir, "me/faq-lora", token=TOKEN, endpoint=hub.url)
    assert "hub-staging" in str(err.value) and hub.requests == []


@pytest.mark.parametrize("repo", ["faq-lora", "me/faq/lora", "me/-faq", "me/faq--lora", "me /faq", "me/" + "x" * 97])
def test_a_bad_repo_id_is_refused_before_anything_is_staged(run_dir, repo):
    with pytest.raises(TunelabError, match="ORG/NAME"):
        push(run_dir, repo, token=TOKEN)
    assert not (run_dir / "hub-staging").exists()


def test_a_merged_model_directory_is_staged_with_a_transformers_card(run_dir, tiny_model_dir, tmp_path):
    merged = Path(shutil.copytree(tiny_model_dir, tmp_path / "merged"))
    with pytest.raises(TunelabError, match="--run RUN"):
        stage(merged)
    kind, staged, files = stage(merged, run=run_dir, repo="me/faq-merged")
    assert kind == "merged" and staged == tmp_path / "merged.hub-staging"
    assert "model.safetensors" in files and "config.json" in files and "adapter_config.json" not in files
    card = (staged / "README.md").read_text()
    assert "library_name: transformers" in card and 'AutoModelForCausalLM.from_pretrained("me/faq-merged")' in card
    # a merged directory that carries tunelab's card needs no --run
    (merged / "README.md").write_text(card)
    assert stage(merged, tmp_path / "again")[0] == "merged"
    assert (tmp_path / "again" / "README.md").read_text() == card


def test_staging_never_replaces_a_users_folder(run_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(TunelabError, match="did not write"):
        stage(run_dir, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
