"""The whole synth run against a real loopback OpenAI-compatible teacher: the dataset it writes, that
`data prepare` takes it, the call cache (re-runs free, resume after an interruption), and teacher
failures (5xx, timeouts, invalid JSON) retried and then counted by reason, never written."""

from __future__ import annotations

import json

import pytest
import teacher_server as teacher

from tunelab.config import DataConfig, SynthConfig
from tunelab.data.prepare import run as prepare
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.synth.run import run


@pytest.fixture
def server():
    srv = teacher.start(slow_s=1.0)
    yield srv
    srv.stop()


def config(server, tmp_path, **over) -> SynthConfig:
    base = {"docs": tmp_path / "docs", "min_chunk_tokens": 5, "per_chunk": 2,
            "teacher": {"spec": f"openai:teacher@{server.base_url}", "cache_dir": tmp_path / "cache",
                        "max_retries": 1, "timeout_s": 5}}
    teacher_over = over.pop("teacher", {})
    base["teacher"].update(teacher_over)
    base.update(over)
    return SynthConfig.model_validate(base)


def test_end_to_end_dataset_that_prepare_takes_with_provenance(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=6)
    (tmp_path / "docs" / "empty.md").write_text("")
    res = run(config(server, tmp_path), tmp_path / "out")
    m = res.manifest
    assert m["documents"] == 2 and m["skipped_files"] == [{"path": "empty.md", "reason": "empty file"}]
    assert m["chunks"]["train"] == 6 and m["teacher_calls"]["ok"] == 6 and m["teacher_calls"]["failures"] == {}
    assert m["records"] == {"train": 12, "eval": 0} and m["candidates"]["train"] == 12
    assert m["yield"]["records_per_chunk"] == 2.0 and m["yield"]["histogram"] == {"2": 6}
    assert m["prompts"]["qa"]["version"] == "qa/1" and m["prompts"]["qa"]["file"] == "bundled"
    assert m["teacher"]["name"] == f"openai:teacher@{server.base_url}"
    assert list(m["filters"]["train"]["steps"]) == ["length", "self_containment", "grounding", "dedup", "format"]
    assert m["teacher_calls"]["cache"]["writes"] == 6
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    chunk_ids = {r["id"] for r in read_jsonl(tmp_path / "out" / "review" / "chunks.jsonl")}
    for row in rows:
        meta = row["meta"]
        assert [t["role"] for t in row["messages"]] == ["user", "assistant"]
        assert meta["source"] in ("part-1.md", "part-2.md") and meta["chunk_id"] in chunk_ids
        assert meta["teacher"] == m["teacher"]["name"] and meta["prompt_version"] == "qa/1"
        assert meta["synth_mode"] == "qa" and meta["grounding"]["overlap"] == 1.0
    assert not (tmp_path / "out" / "eval.jsonl").exists()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["dataset_hash"] == m["dataset_hash"]

    # data prepare takes the file as it is, and the provenance survives into the prepared records
    # (split by source document: the provenance field is usable as a group)
    split = {"train": 0.5, "validation": 0.5, "group_by": "source"}
    prepared = prepare(DataConfig(train=[tmp_path / "out" / "train.jsonl"], split=split), tmp_path / "prepared")
    assert prepared.splits["train"] == prepared.splits["validation"] == 6 and prepared.manifest["removed"] == {}
    for row in read_jsonl(tmp_path / "prepared" / "train.jsonl"):
        assert row["kind"] == "chat"
        assert {"source", "chunk_id", "teacher", "prompt_version", "synth_mode"} <= set(row["meta"])


def test_a_second_run_makes_no_http_calls_and_writes_the_same_dataset(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=5)
    first = run(config(server, tmp_path), tmp_path / "out")
    sent = len(server.requests)
    assert sent == 5
    second = run(config(server, tmp_path), tmp_path / "out")
    assert len(server.requests) == sent  # zero HTTP calls
    assert second.manifest["teacher_calls"]["cached_attempts"] == 5
    assert second.manifest["teacher_calls"]["cache"] == {"dir": str(tmp_path / "cache"), "hits": 5, "misses": 0, "writes": 0}
    assert second.manifest["dataset_hash"] == first.manifest["dataset_hash"]
    # without the cache every call is paid again
    run(config(server, tmp_path, teacher={"cache": False}), tmp_path / "out")
    assert len(server.requests) == 2 * sent


def test_an_interrupted_run_writes_nothing_and_resumes_from_the_cache(server, tmp_path):
    # 20 chunks; with concurrency 1 a slice is 16 chunks, so the interruption comes after the first slice
    teacher.write_docs(tmp_path / "docs", sections=20, docs=4)
    cfg = config(server, tmp_path, teacher={"concurrency": 1})

    def interrupt(stage: str, done: int, total: int) -> None:
        if stage == "generating" and done == 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "out", on_progress=interrupt)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary leftovers
    assert len(server.requests) == 16
    result = run(cfg, tmp_path / "out")
    assert len(server.requests) == 20  # only the 4 calls that never came back were paid for
    calls = result.manifest["teacher_calls"]
    assert calls["cache"]["hits"] == 16 and calls["cache"]["misses"] == 4
    assert result.manifest["records"]["train"] == 40


def test_5xx_is_retried_and_timeouts_and_invalid_json_are_counted_by_reason(server, tmp_path, monkeypatch):
    # section 1 answers 500 on every try, 2 too slowly, 3 never in JSON, 4 in JSON only when re-asked
    teacher.write_docs(tmp_path / "docs", sections=6, marker={1: "CRASH", 2: "SLOW", 3: "BROKEN", 4: "FIXME"})
    cfg = config(server, tmp_path, teacher={"timeout_s": 0.3, "max_retries": 1}, parse_retries=2)
    monkeypatch.setattr("tunelab.llm.openai_http.backoff_delay", lambda *a, **k: 0.01)
    res = run(cfg, tmp_path / "out")
    calls = res.manifest["teacher_calls"]
    assert calls["failures"] == {"http_error": 1, "timeout": 1, "invalid_json": 1}
    assert calls["ok"] == 3 and calls["requests"] == 6
    # transport failures are retried by the HTTP backend (1 + max_retries posts), bad JSON by re-asking
    crash = [r for r in server.requests if "CRASH" in json.dumps(r["body"])]
    broken = [r for r in server.requests if "BROKEN" in r["body"]["messages"][-1]["content"]
              or "BROKEN" in json.dumps(r["body"]["messages"][:4])]
    assert len(crash) == 2 and len(broken) == 3
    failures = {f["error_kind"]: f for f in read_jsonl(tmp_path / "out" / "review" / "failures.jsonl")}
    assert set(failures) == {"http_error", "timeout", "invalid_json"}
    assert "HTTP 500" in failures["http_error"]["error"] and failures["invalid_json"]["attempts"] == 3
    assert failures["invalid_json"]["reply"].startswith("Sure! Here are")
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert {r["meta"]["chunk_id"] for r in rows} == {
        c["id"] for c in read_jsonl(tmp_path / "out" / "review" / "chunks.jsonl") if c["teacher"] == "ok"}
    assert len(rows) == 6  # 3 usable chunks x 2, the re-asked one included; nothing from the failed ones
    chunks = {c["teacher"] for c in read_jsonl(tmp_path / "out" / "review" / "chunks.jsonl")}
    assert chunks == {"ok", "http_error", "timeout", "invalid_json"}
    # failures are not cached: a re-run asks again for exactly those, and the good answers come from disk
    before = len(server.requests)
    again = run(cfg, tmp_path / "out")
    assert again.manifest["teacher_calls"]["failures"] == calls["failures"]
    new = server.requests[before:]
    assert new and all(any(k in json.dumps(r["body"]) for k in ("CRASH", "SLOW")) for r in new)


def test_nothing_usable_is_an_error_that_explains_and_writes_nothing(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=2, marker={0: "BROKEN", 1: "BROKEN"})
    with pytest.raises(TunelabError) as err:
        run(config(server, tmp_path, parse_retries=0), tmp_path / "out")
    msg = str(err.value)
    assert "no records kept from 2 chunk(s); nothing was written" in msg
    assert "usable: 0 of 2" in msg and "'invalid_json': 2" in msg and "Sure! Here are" in msg
    assert not (tmp_path / "out").exists()


def test_output_never_replaces_what_synth_did_not_write(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(TunelabError, match="holds files tunelab did not write"):
        run(config(server, tmp_path), mine)
    assert (mine / "notes.txt").read_text() == "precious"
    with pytest.raises(TunelabError, match="overlap"):
        run(config(server, tmp_path), tmp_path / "docs" / "out")
    with pytest.raises(TunelabError, match="no such file"):
        run(config(server, tmp_path, docs=tmp_path / "missing"), tmp_path / "out")
    assert len(server.requests) == 0
