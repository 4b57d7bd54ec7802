"""The comparison matrix built from a config."""

from __future__ import annotations

import pytest

from tunelab.compare.variants import build_matrix, slug, training_config
from tunelab.config import validate_data
from tunelab.errors import TunelabError


def _config(tmp_path, **sections):
    return validate_data({"name": "exp", "workdir": str(tmp_path), **sections})


def test_matrix_order_and_ids(tmp_path):
    cfg = _config(tmp_path, rag={"docs": str(tmp_path)}, compare={"models": ["m-one", "org/m-two"]})
    labels = [v.label for v in build_matrix(cfg)]
    assert labels == ["m-one base", "m-one base + RAG", "m-one tuned", "m-one tuned + RAG",
                      "org/m-two base", "org/m-two base + RAG", "org/m-two tuned", "org/m-two tuned + RAG"]
    ids = [v.id for v in build_matrix(cfg)]
    assert ids[0] == "m-one--base--norag" and ids[-1] == "org-m-two--tuned--rag"
    tuned = build_matrix(cfg)[2]
    assert tuned.weights == tmp_path / "exp" / "train" / "m-one"
    assert training_config(cfg, "org/m-two").run_dir == tmp_path / "exp" / "train" / "org-m-two"


def test_rag_auto_off_without_docs_and_extras(tmp_path):
    cfg = _config(tmp_path, compare={"train": False, "extra": [{"name": "mine", "model": "m", "adapter": str(tmp_path)}]})
    assert [v.label for v in build_matrix(cfg)] == ["smollm2-135m-instruct base", "m mine"]


def test_duplicate_labels_are_an_error(tmp_path):
    cfg = _config(tmp_path, compare={"extra": [{"name": "tuned", "model": "smollm2-135m-instruct", "adapter": "x"}]})
    with pytest.raises(TunelabError, match="both be called"):
        build_matrix(cfg)


def test_slug():
    assert slug("HuggingFaceTB/SmolLM2 135M") == "huggingfacetb-smollm2-135m"
