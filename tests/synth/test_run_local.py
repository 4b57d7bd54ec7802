"""The local teacher path on the tiny random model: decoded under the reply's schema, its replies are
gibberish in well-formed JSON, so this checks the plumbing (prompts rendered through the chat template,
batched constrained generation, the call cache) and that every failure and drop is counted by its
reason and nothing of it is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import SynthConfig
from tunelab.errors import TunelabError
from tunelab.llm import backend_from_spec
from tunelab.synth.run import run

SHORT_PROMPT = """version: tiny/1
about: short enough for the tiny model's 256 positions
[system]
JSON only.
[user]
$n Q/A as {"pairs": [...]} about: $text
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def test_local_teacher_failures_are_counted_by_reason_and_resumed_from_cache(tiny_model_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\n## One\n\nThe fox jumps over the dog twice a day.\n\n"
                               "## Two\n\nThe cat sleeps in the sun every afternoon.\n\n"
                               "## Long\n\n" + "The dog runs far across the field. " * 40 + "\n")
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "qa.txt").write_text(SHORT_PROMPT)
    cfg = SynthConfig(docs=docs, teacher="local:unused", chunk_tokens=400, chunk_overlap=0, min_chunk_tokens=3,
                      per_chunk=1, max_tokens=6, parse_retries=0, prompts=prompts)

    def backend():
        return backend_from_spec(f"local:{tiny_model_dir}", cache=tmp_path / "cache", batch_size=2, threads=1)

    teacher = backend()
    with pytest.raises(TunelabError) as err:
        run(cfg, tmp_path / "out", teacher=teacher)
    msg = str(err.value)
    # two short chunks: gibberish, but parsed (the grammar allows nothing else) and then dropped by the
    # filters; the long one does not fit the tiny model's 256 positions
    assert "no records kept from 3 chunk(s)" in msg
    assert "usable: 2 of 3" in msg and "{'generation_error': 1}" in msg and "dropped by filter: {" in msg
    assert "context is 256" in msg
    assert not (tmp_path / "out").exists()
    assert teacher.cache.stats()["writes"] == 2  # the gibberish replies; failed generations are not cached

    # the re-run replays the cached replies without loading the model; the failed one is tried again
    again = backend()
    with pytest.raises(TunelabError) as err2:
        run(cfg, tmp_path / "out", teacher=again)
    assert str(err2.value).split("e.g.")[0] == msg.split("e.g.")[0]
    assert again.cache.stats()["hits"] == 2 and again.cache.stats()["misses"] == 1
    # with only cached calls left, the model is never loaded
    (docs / "a.md").write_text((docs / "a.md").read_text().split("## Long")[0])
    third = backend()
    with pytest.raises(TunelabError, match="usable: 2 of 2"):
        run(cfg, tmp_path / "out", teacher=third)
    assert third.cache.stats()["misses"] == 0 and third.backend._generator is None


@pytest.mark.slow
def test_bundled_instruct_model_as_teacher_on_one_handbook_chunk(tmp_path):
    """SmolLM2-135M-Instruct through the real prompt and chat template on one chunk: whatever it writes,
    the run either keeps grounded, well-formed records or says why not, and the counts add up."""
    from tunelab.io import read_jsonl
    from tunelab.models.bundled import find_bundled
    from tunelab.models.registry import model_path

    find_bundled("smollm2-135m-instruct").require_installed()  # make install adds it: missing is a failure
    model_path("smollm2-135m-instruct")
    docs = tmp_path / "docs"
    docs.mkdir()
    handbook = Path(__file__).parents[2] / "examples" / "handbook" / "docs" / "03-leave-and-holidays.md"
    (docs / "leave.md").write_text(handbook.read_text().split("\n## ")[0] + "\n")
    cfg = SynthConfig(docs=docs, teacher={"spec": "local:smollm2-135m-instruct", "cache_dir": tmp_path / "cache"},
                      max_chunks=1, per_chunk=1, max_tokens=96, parse_retries=0)
    try:
        res = run(cfg, tmp_path / "out")
    except TunelabError as exc:  # no usable record: the error says why, by reason, and nothing is written
        assert "no records kept from 1 chunk(s)" in str(exc) and not (tmp_path / "out").exists()
        assert "usable: 1 of 1" in str(exc)  # decoded under the schema, the reply itself always parses
        return
    calls = res.manifest["teacher_calls"]
    assert calls["requests"] == 1 and calls["ok"] == 1 and calls["cache"]["writes"] == 1
    for row in read_jsonl(tmp_path / "out" / "train.jsonl"):
        assert row["meta"]["teacher"] == "local:smollm2-135m-instruct"
        assert row["meta"]["grounding"]["overlap"] >= cfg.filters.min_overlap
