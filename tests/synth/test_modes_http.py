"""Every generation mode, both eval sets, the LLM judge and the CLI, against the scripted loopback
teacher; every output must be taken as it is by `data prepare`."""

from __future__ import annotations

import json

import pytest
import teacher_server as teacher
import yaml
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.config import DataConfig, SynthConfig, load_config
from tunelab.data.prepare import load_manifest
from tunelab.data.prepare import run as prepare
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.synth.run import from_experiment, run


@pytest.fixture
def server():
    srv = teacher.start()
    yield srv
    srv.stop()


def config(server, tmp_path, **over) -> SynthConfig:
    base = {"docs": tmp_path / "docs", "min_chunk_tokens": 5, "per_chunk": 2,
            "teacher": {"spec": f"openai:teacher@{server.base_url}", "cache_dir": tmp_path / "cache"}}
    base.update(over)
    return SynthConfig.model_validate(base)


def prepared_rows(tmp_path, out, eval_file: bool = False) -> dict[str, list[dict]]:
    cfg = DataConfig(train=[out / "train.jsonl"], eval=out / "eval.jsonl" if eval_file else None,
                     split={"train": 1.0, "validation": 0.0})
    res = prepare(cfg, tmp_path / "prepared")
    return {name: read_jsonl(tmp_path / "prepared" / f"{name}.jsonl") for name in res.splits}


@pytest.mark.parametrize("mode", ["instruction", "multi_turn", "labelled", "preference"])
def test_each_mode_gives_records_that_prepare_takes(server, tmp_path, mode):
    teacher.write_docs(tmp_path / "docs", sections=4, marker={1: "BADLABEL"} if mode == "labelled" else None)
    extra = {"labels": ["bravo", "delta", "echo"]} if mode == "labelled" else {}
    res = run(config(server, tmp_path, mode=mode, turns=2, **extra), tmp_path / "out")
    m = res.manifest
    assert m["mode"] == mode and m["prompts"][mode]["version"] == f"{mode}/1"
    assert m["teacher_calls"]["failures"] == {} and m["records"]["train"] == 8
    # asked under the mode's schema narrowed to this request: the items, turns and labels asked for
    assert m["teacher_calls"]["structured_output"] == "json_schema"
    asked = server.requests[0]["body"]["response_format"]["json_schema"]["schema"]
    items = asked["properties"][{"multi_turn": "conversations", "labelled": "examples"}.get(mode, "items")]
    assert items["minItems"] == items["maxItems"] == 2 and items["items"]["additionalProperties"] is False
    if mode == "multi_turn":
        assert items["items"]["properties"]["turns"]["maxItems"] == 2
    if mode == "labelled":
        assert items["items"]["properties"]["label"] == {"enum": ["bravo", "delta", "echo"]}
    rows = prepared_rows(tmp_path, tmp_path / "out")["train"]
    assert len(rows) == 8
    kinds = {r["kind"] for r in rows}
    for r in rows:
        assert r["meta"]["synth_mode"] == mode and r["meta"]["prompt_version"] == f"{mode}/1"
    if mode == "instruction":
        assert kinds == {"chat"} and all(r["messages"][0]["content"].startswith("Explain") for r in rows)
    elif mode == "multi_turn":
        assert kinds == {"chat"}
        assert all([t["role"] for t in r["messages"]] == ["user", "assistant"] * 2 for r in rows)
    elif mode == "labelled":
        assert kinds == {"label"} and {r["label"] for r in rows} <= {"bravo", "delta", "echo"}
        # the label outside the set was re-asked (a schema mismatch), not written
        assert m["teacher_calls"]["attempts"] == 5 and sum(m["labels"].values()) == 8
    else:
        assert kinds == {"preference"}
        for r in rows:
            assert r["chosen"] != r["rejected"] and r["meta"]["grounding"]["rejected_unsupported"]


def test_held_out_sections_make_an_eval_set_prepare_checks_for_leaks(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=10)
    res = run(config(server, tmp_path, eval_set="held_out", eval_fraction=0.2), tmp_path / "out")
    ev = res.manifest["eval_set"]
    assert ev["how"] == "held_out" and "retrieval" in ev["tests"] and len(ev["chunk_ids"]) == 2
    assert res.manifest["chunks"] == {"total": 10, "too_short": 0, "not_sampled": 0, "train": 8, "eval": 2}
    train = read_jsonl(tmp_path / "out" / "train.jsonl")
    evals = read_jsonl(tmp_path / "out" / "eval.jsonl")
    assert len(train) == 16 and len(evals) == 4
    assert {r["meta"]["chunk_id"] for r in evals} == set(ev["chunk_ids"])
    assert not {r["meta"]["chunk_id"] for r in train} & set(ev["chunk_ids"])
    assert all(r["meta"]["eval_source"] == "held_out" for r in evals)
    splits = prepared_rows(tmp_path, tmp_path / "out", eval_file=True)
    assert len(splits["eval"]) == 4 and len(splits["train"]) == 16
    # The directory itself stands for its train.jsonl and held-out eval.jsonl, in data prepare and in the
    # training path (which turns other directories into documents): the same dataset as the files give.
    from tunelab.train.run import prepare_data

    expected = load_manifest(tmp_path / "prepared")["dataset_hash"]
    whole = DataConfig(train=[tmp_path / "out"], split={"train": 1.0, "validation": 0.0})
    direct = prepare(whole, tmp_path / "direct")
    assert direct.manifest["dataset_hash"] == expected
    assert direct.manifest["inputs"] == [str(tmp_path / "out" / n) for n in ("train.jsonl", "eval.jsonl")]
    trained = prepare_data(whole, tmp_path / "run" / "data")
    assert trained["dataset_hash"] == expected and "documents" not in trained
    assert not (tmp_path / "run" / "data-documents").exists()
    # the same seed holds out the same sections
    again = run(config(server, tmp_path, eval_set="held_out", eval_fraction=0.2), tmp_path / "out2")
    assert again.manifest["eval_set"]["chunk_ids"] == ev["chunk_ids"]


def test_paraphrased_eval_set_rewords_training_questions(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=5)
    res = run(config(server, tmp_path, eval_set="paraphrase", eval_fraction=0.3), tmp_path / "out")
    ev = res.manifest["eval_set"]
    assert ev["how"] == "paraphrase" and ev["sampled"] == 3 and ev["records"] == 3
    assert res.manifest["prompts"]["paraphrase"]["version"] == "paraphrase/1"
    train = {r["messages"][0]["content"]: r for r in read_jsonl(tmp_path / "out" / "train.jsonl")}
    for r in read_jsonl(tmp_path / "out" / "eval.jsonl"):
        original = train[r["meta"]["paraphrase_of"]]
        assert r["messages"][0]["content"].startswith("Could you tell me")
        assert r["messages"][1] == original["messages"][1]  # same answer
        assert r["meta"]["eval_source"] == "paraphrase" and r["meta"]["chunk_id"] == original["meta"]["chunk_id"]
    assert "tunelab eval" in res.manifest["next"][1]
    # a paraphrase set shares answers with training by design: the directory gives no eval split
    direct = prepare(DataConfig(train=[tmp_path / "out"], split={"train": 0.9}), tmp_path / "direct")
    assert "eval" not in direct.splits and direct.manifest["inputs"] == [str(tmp_path / "out" / "train.jsonl")]


def test_the_judge_drops_what_it_cannot_confirm_and_counts_its_failures(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=4, marker={2: "WRONG"})
    judge = {"spec": f"openai:judge@{server.base_url}", "cache_dir": tmp_path / "judge-cache"}
    res = run(config(server, tmp_path, judge=judge), tmp_path / "out")
    steps = res.manifest["filters"]["train"]["steps"]
    assert steps["judge"] == {"in": 8, "dropped": 2, "reasons": {"not_supported": 2}}
    assert res.manifest["filters"]["train"]["judge_calls"]["requests"] == 8
    assert res.manifest["filters"]["train"]["judge_calls"]["structured_output"] == "json_schema"
    assert res.manifest["prompts"]["judge_grounding"]["version"] == "judge_grounding/2"
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert len(rows) == 6 and all(r["meta"]["grounding"]["judge"] == "confirmed" for r in rows)
    # preference: the rejected reply must be judged unsupported; labelled: the label confirmed
    pref = run(config(server, tmp_path, judge=judge, mode="preference"), tmp_path / "pref")
    assert pref.manifest["filters"]["train"]["steps"]["judge"]["reasons"] == {"not_supported": 2}
    assert pref.manifest["filters"]["train"]["judge_calls"]["requests"] == 16
    lab = run(config(server, tmp_path, judge=judge, mode="labelled", labels=["right", "wrong"]), tmp_path / "lab")
    assert lab.manifest["filters"]["train"]["steps"]["judge"]["reasons"] == {"wrong_label": 4}
    assert lab.manifest["labels"] == {"right": 4}

    # a judge that never answers in JSON: records are dropped as unchecked, failures counted
    bad = teacher.openai_server.OpenAIServer(lambda body: "I think it is fine.").start()
    try:
        judge = {"spec": f"openai:judge@{bad.base_url}", "cache": False, "parse_retries": 0}
        with pytest.raises(TunelabError) as err:
            run(config(server, tmp_path, judge=judge, docs=tmp_path / "docs"), tmp_path / "out3")
    finally:
        bad.stop()
    assert "'judge_failed': 8" in str(err.value) and "nothing was written" in str(err.value)
    assert not (tmp_path / "out3").exists()


def test_cli_runs_synth_and_prints_one_json_object(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=3)
    args = ["data", "synth", str(tmp_path / "docs"), "--teacher", f"openai:teacher@{server.base_url}",
            "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--per-chunk", "1",
            "--min-chunk-tokens", "5"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["records"] == {"train": 3, "eval": 0} and out["dropped"]["grounding"] == 0
    assert out["next"][0].startswith("tunelab data prepare")
    # for a person: the filter table and the next step
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 training records" in result.output and "self_containment" in result.output
    assert "3 calls (3 from cache)" in " ".join(result.output.split())
    # and data prepare takes the output, its train.jsonl or the directory itself
    for i, given in enumerate((tmp_path / "out" / "train.jsonl", tmp_path / "out")):
        result = CliRunner().invoke(app, ["data", "prepare", str(given), "--out", str(tmp_path / f"prepared{i}"),
                                          "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["splits"]["train"] + json.loads(result.stdout)["splits"]["validation"] == 3


def test_cli_errors_are_clear_and_write_nothing(server, tmp_path):
    teacher.write_docs(tmp_path / "docs", sections=2)
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "docs"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "missing --teacher" in result.output
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "docs"), "--teacher", "local:m",
                                      "--out", str(tmp_path / "out"), "--mode", "labelled"])
    assert result.exit_code == 2 and "mode labelled needs labels" in result.output
    result = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "docs"), "--teacher", "nope:m",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown backend kind 'nope'" in result.output
    assert not (tmp_path / "out").exists() and not server.requests


def test_synth_section_of_an_experiment_config(server, tmp_path):
    teacher.write_docs(tmp_path / "exp" / "docs", sections=3)
    (tmp_path / "exp" / "prompts").mkdir()
    exp = {"name": "demo", "workdir": "runs",
           "synth": {"docs": "docs", "teacher": f"openai:teacher@{server.base_url}", "min_chunk_tokens": 5,
                     "per_chunk": 1, "prompts": "prompts", "filters": {"pool": "pool.jsonl"}}}
    path = tmp_path / "exp" / "experiment.yaml"
    path.write_text(yaml.safe_dump(exp))
    (tmp_path / "exp" / "pool.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "What should I know about The bravenox team meets every 2?"},
        {"role": "assistant", "content": "The bravenox team meets every 2 days in room 100."}]}) + "\n")
    cfg = load_config(path)
    synth = from_experiment(cfg)
    assert synth.docs == tmp_path / "exp" / "docs" and synth.prompts == tmp_path / "exp" / "prompts"
    assert synth.filters.pool == [tmp_path / "exp" / "pool.jsonl"]
    assert synth.out == tmp_path / "exp" / "runs" / "demo" / "synth"
    result = CliRunner().invoke(app, ["data", "synth", "--config", str(path), "--set", "synth.max_chunks=2",
                                      "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # two of the three chunks, and the first one's question is already in the pool
    assert out["chunks"]["not_sampled"] == 1 and out["records"]["train"] == 1 and out["dropped"]["dedup"] == 1
    assert out["out_dir"] == str(synth.out)
    import mlflow  # the synth step is a run of the experiment in its tracking store

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'exp' / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.data.tags["tunelab.stage"] == "synth" and run.data.metrics["records.train"] == 1
