"""The call cache's key for a local model follows the model's content: the same name or path with other
weights misses the cache; nothing changed is a hit."""

from __future__ import annotations

import shutil

from content_edits import nudge_weights

from tunelab.llm import CachedBackend, CallCache, LocalBackend

CONV = [[{"role": "user", "content": "Say hello."}]]


def test_local_calls_rerun_when_the_weights_change_under_the_same_path(tiny_model_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cache = CallCache(tmp_path / "calls")

    def ask():
        return CachedBackend(LocalBackend(str(model), batch_size=1, threads=1), cache).complete(CONV, max_tokens=4)

    assert not ask()[0].cached and cache.writes == 1
    assert ask()[0].cached  # nothing changed: answered from the cache
    nudge_weights(model)
    assert not ask()[0].cached and cache.writes == 2  # same path, other weights: generated again
    assert ask()[0].cached


def test_identity_holds_the_device_kind_and_dtype(tiny_model_dir):
    ident = LocalBackend(str(tiny_model_dir), dtype="auto", device="cpu").identity()
    assert ident["runtime"] == {"device": "cpu", "dtype": "float32"} and len(ident["model_sha256"]) == 64
    assert LocalBackend(str(tiny_model_dir), dtype="bfloat16").identity()["runtime"]["dtype"] == "bfloat16"
