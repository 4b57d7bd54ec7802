"""Secret redaction: by key, by shape, by known value (from the environment, registered by whoever read it);
what must be left alone; and the writers of tunelab.io, which mask everything they write."""

from __future__ import annotations

import json

import pytest

from tunelab import secrets
from tunelab.io import read_jsonl, write_json, write_jsonl, write_text
from tunelab.secrets import (
    MASK,
    Redactor,
    env_secrets,
    is_secret_key,
    redact,
    redact_file,
    redact_text,
    register_secret,
    register_url_secrets,
    secrets_in,
)

OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"
HF = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"


@pytest.mark.parametrize("key", [
    "api_key", "API_KEY", "apiKey", "x-api-key", "OPENAI_API_KEY", "openai.api_key", "token", "hf_token",
    "HF_TOKEN", "access_token", "secret", "client_secret", "clientSecret", "password", "db_password",
    "Authorization", "credentials", "credential", "private_key", "aws_secret_access_key", "passphrase",
])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "api_key_env", "token_env", "password_file", "key", "max_tokens", "max_new_tokens", "tokens",
    "tokens_per_s", "val_loss_tokens", "num_virtual_tokens", "token_f1", "eos_token", "pad_token", "bos_token",
    "keep_last", "tokenizer", "name", "lr", "monkey", "TOKENIZERS_PARALLELISM", "SSH_AUTH_SOCK", 3, None,
    "answerKey", "answer_key", "cache_key", "sort_key",  # what a value is looked up by, not a credential
])
def test_not_secret_keys(key):
    assert not is_secret_key(key)


def test_redact_nested_structures_by_key():
    data = {
        "name": "demo",
        "teacher": {"api_key": "plain-looking-value", "api_key_env": "OPENAI_API_KEY", "max_tokens": 128,
                    "headers": [{"Authorization": "whatever"}, {"Accept": "json"}]},
        "hub": {"token": "abc", "use_auth_token": True, "password": None, "eos_token": "</s>"},
        "list": [{"secret": 1234}, "plain text"],
        "credentials": {"user": "a", "pw": "b"},
    }
    out = redact(data, known=[])
    assert out["teacher"]["api_key"] == MASK
    assert out["teacher"]["api_key_env"] == "OPENAI_API_KEY"  # the variable's name is fine to show
    assert out["teacher"]["max_tokens"] == 128
    assert out["teacher"]["headers"] == [{"Authorization": MASK}, {"Accept": "json"}]
    assert out["hub"] == {"token": MASK, "use_auth_token": True, "password": None, "eos_token": "</s>"}
    assert out["list"] == [{"secret": MASK}, "plain text"]
    assert out["credentials"] == MASK
    assert data["teacher"]["api_key"] == "plain-looking-value"  # a copy; the input is untouched


def test_env_field_holding_a_key_instead_of_a_name_is_masked():
    assert redact({"api_key_env": "Zq8xW3rT9pLm2VbN6yHc"}, known=[])["api_key_env"] == MASK
    assert redact({"api_key_env": "not a variable name!"}, known=[])["api_key_env"] == MASK
    assert redact({"token_env": "HF_TOKEN"}, known=[])["token_env"] == "HF_TOKEN"


@pytest.mark.parametrize("text,secret", [
    (f"using {OPENAI} now", OPENAI),
    ("key sk-ant-api03-AbCdEfGhIjKlMnOpQrSt-uv", "sk-ant-api03-AbCdEfGhIjKlMnOpQrSt-uv"),
    (f"token={HF}", HF),
    ("ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    ("google AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    ("Authorization: Bearer abc.DEF-ghi_123456", "abc.DEF-ghi_123456"),
    ("curl -H 'authorization: basic dXNlcjpwYXNzd29yZA=='", "dXNlcjpwYXNzd29yZA=="),
    ("https://alice:s3cr3t-pw@mlflow.example.com/api", "s3cr3t-pw"),
    ("postgresql://bob:hunter22@db:5432/mlflow", "hunter22"),
    ("OPENAI_API_KEY=whatever-it-is", "whatever-it-is"),
    ("export HF_TOKEN='quoted value with spaces'", "quoted value with spaces"),
    ('{"api_key": "json-value-1", "model": "x"}', "json-value-1"),
    ("teacher:\n  password: yaml-pw-99\n  model: x\n", "yaml-pw-99"),
    ("GET /v1?api_key=q1w2e3r4&model=x", "q1w2e3r4"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"),
])
def test_shapes_are_masked_anywhere(text, secret):
    out = redact_text(text, known=[])
    assert secret not in out
    assert MASK in out


@pytest.mark.parametrize("text", [
    "max_tokens: 128\ntokens_per_s=5.2\neos_token: <|im_end|>",
    "commit 3f2a9c1e0b4d5a6978877665544332211aabbccd, run 49949d1da55645949bab2a77610d091c",
    "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct and http://localhost:8000/v1",
    "/home/user/runs/demo/adapter_model.safetensors",
    "api_key_env: OPENAI_API_KEY",
    "The task-specific model answered: Paris is the capital of France.",
    "api_key: null\npassword: ''",
    "hf_hub_disable_progress_bars sk-learn",
    "It needs a basic understanding. Token generation is fast; the bearer remained anonymous.",
    "HTTP 401 (the API key comes from $OPENAI_API_KEY: set)",  # names the variable, holds no value
])
def test_ordinary_text_is_left_alone(text):
    assert redact_text(text, known=[]) == text


def test_long_inputs_take_linear_time():
    import time

    started = time.perf_counter()
    for text in ("x" * 200_000, "ab:" * 70_000, "https" * 40_000, '{"api_key": "v", ' * 10_000):
        redact_text(text, known=[])
    assert time.perf_counter() - started < 10  # backtracking patterns would take hours here


def test_known_values_from_the_environment_are_masked_whatever_their_shape(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "plainwords-not-a-pattern")
    monkeypatch.setenv("HARMLESS_SETTING", "plainwords-visible")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert "plainwords-not-a-pattern" in env_secrets()
    assert "plainwords-visible" not in env_secrets()
    out = redact_text("log: connecting with plainwords-not-a-pattern and plainwords-visible")
    assert "plainwords-not-a-pattern" not in out and "plainwords-visible" in out
    assert redact({"note": "x plainwords-not-a-pattern"}) == {"note": f"x {MASK}"}


def test_secrets_in_collects_values_and_the_env_values_fields_point_at(monkeypatch):
    monkeypatch.setenv("ODD_NAME", "value-of-the-odd-variable")
    config = {"judge": {"api_key_env": "ODD_NAME", "api_key": "inline-secret-1"}, "token": "short",
              "other_env": "ODD_NAME"}
    found = secrets_in(config)
    assert set(found) == {"value-of-the-odd-variable", "inline-secret-1"}
    redactor = Redactor(found)
    assert redactor.text("x value-of-the-odd-variable y inline-secret-1") == f"x {MASK} y {MASK}"


def test_redact_file_streams_and_keeps_undecodable_bytes(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"prediction": "ok", "api_key": "abc12345"}\n\xff\xfe raw bytes ' + OPENAI.encode() + b"\n")
    dst = tmp_path / "out.jsonl"
    assert redact_file(src, dst, known=[]) is True
    data = dst.read_bytes()
    assert b"abc12345" not in data and OPENAI.encode() not in data
    assert b"\xff\xfe raw bytes" in data and b'"prediction": "ok"' in data
    clean = tmp_path / "clean.txt"
    clean.write_text("nothing to hide\n")
    assert redact_file(clean, tmp_path / "clean.out", known=[]) is False
    assert (tmp_path / "clean.out").read_text() == "nothing to hide\n"


@pytest.fixture
def registry(monkeypatch):
    """A registry of secrets of this test's own (the process-wide one is left as it was)."""
    monkeypatch.setattr(secrets, "_REGISTERED", set())


def test_registered_secrets_are_masked_whatever_their_shape_or_name(registry):
    value = "no-shape-at-all-4711"
    assert redact_text(f"server said: {value}") == f"server said: {value}"
    register_secret(value)
    register_secret("short")  # too short to mask safely as a bare value (it is masked by shape only)
    register_url_secrets("openai:m@https://alice:pa%24%24word-99@host.example/v1")
    assert redact_text(f"server said: {value}, short") == f"server said: {MASK}, short"
    assert redact_text("quoted pa%24%24word-99 and pa$$word-99") == f"quoted {MASK} and {MASK}"
    assert redact({"note": value}) == {"note": MASK}
    assert Redactor(known=[]).text(value) == value  # an explicit list is exactly what it says


URL = "openai:judge@http://alice:S3cretPw-42@127.0.0.1:8000/v1"
SHOWN = "openai:judge@http://alice:***@127.0.0.1:8000/v1"


def test_io_writers_mask_what_they_write(tmp_path, registry, monkeypatch):
    monkeypatch.setenv("TUNELAB_TEST_API_KEY", "sk-live-abc123def456ghi789")
    register_secret("odd-credential-from-an-odd-variable")
    write_text(tmp_path / "config.resolved.yaml", f"judge:\n  spec: {URL}\n  api_key: inline-value-1\n")
    write_json(tmp_path / "summary.json", {"judge": URL, "api_key": "inline-value-2", "n": 3,
                                           "error": "HTTP 401: key odd-credential-from-an-odd-variable refused"})
    write_jsonl(tmp_path / "predictions.jsonl",
                [{"judge_model": URL, "reason": "Bearer sk-live-abc123def456ghi789"}])
    assert (tmp_path / "config.resolved.yaml").read_text() == f"judge:\n  spec: {SHOWN}\n  api_key: {MASK}\n"
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "judge": SHOWN, "api_key": MASK, "n": 3, "error": f"HTTP 401: key {MASK} refused"}
    assert read_jsonl(tmp_path / "predictions.jsonl") == [{"judge_model": SHOWN, "reason": f"Bearer {MASK}"}]


def test_io_writers_leave_data_without_secrets_as_it_is(tmp_path):
    rows = [{"id": "q1", "question": {"stem": "Which metal?", "choices": [{"text": "iron", "label": "A"}]},
             "answerKey": "A", "cache_key": "3f2a", "key": "k", "max_tokens": 8, "score": 0.5, "none": None}]
    write_jsonl(tmp_path / "arc.jsonl", rows)
    assert read_jsonl(tmp_path / "arc.jsonl") == rows
    write_json(tmp_path / "key.json", {"hash": "ab" * 32, "path": tmp_path, "dtype": ("a", "b")})
    assert json.loads((tmp_path / "key.json").read_text()) == {"hash": "ab" * 32, "path": str(tmp_path),
                                                              "dtype": ["a", "b"]}
