"""RAG-aware training data (compare.ragaware): a trained prompt with passages is token for token the prompt
the RAG variant is asked at inference; the mix draws exactly the shares asked, seeded; a known gold passage
is forced in when retrieval missed it, never into a distractors-only example; the matrix gains the
RAG-aware variants while the plain tuned model keeps its reuse key."""

from __future__ import annotations

import random

import pytest

from tunelab.compare.evaluate import Retrieval, rag_records
from tunelab.compare.ragaware import assign_modes, augment, mix_counts
from tunelab.compare.variants import RAG_AWARE, build_matrix, training_config
from tunelab.config import RagConfig, validate_data
from tunelab.config.ragcontext import RagContextConfig
from tunelab.data.records import Record
from tunelab.errors import TunelabError
from tunelab.pipeline import train_key
from tunelab.rag import Hit

DOCS = [("leave.md", "Staff get 25 days of annual leave."), ("it.md", "The helpdesk resets passwords."),
        ("office.md", "The head office is in Leeds."), ("pay.md", "Salaries are paid on the 25th."),
        ("food.md", "The canteen opens at noon.")]
ROWS = [{"id": f"c{i}", "doc": doc, "heading": ["Handbook"], "text": text} for i, (doc, text) in enumerate(DOCS)]


def _hits(order: list[int]) -> list[Hit]:
    """A deep search's answer: the chunks in `order`, best first."""
    return [Hit(ROWS[i]["id"], ROWS[i]["doc"], ("Handbook",), ROWS[i]["text"], 1.0 - r / 10, r + 1)
            for r, i in enumerate(order)]


def _record(question: str, answer: str, **meta) -> Record:
    return Record("chat", messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                  meta={"file": "train.jsonl", "line": 1, **meta})


def _cfg(**kw) -> RagContextConfig:
    return RagContextConfig.model_validate(kw)


def test_a_training_prompt_is_token_identical_to_the_inference_rag_prompt(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tunelab.models.generate import Generator
    from tunelab.train.objectives import get_objective

    rag = RagConfig(top_k=2, context_tokens=400)
    rec = _record("How many days of leave do I get?", "25 days.")
    hits = _hits([0, 2, 1, 3, 4])
    cfg = _cfg(gold="off", mix={"gold_with_distractors": 1.0, "distractors_only": 0.0, "no_context": 0.0})
    [trained], _ = augment([rec], [hits], ROWS, cfg, rag, tiny_tokenizer, seed=0)
    retrieval = Retrieval(index=None, hits=[hits], top_k=rag.top_k, context_tokens=rag.context_tokens,
                          prompt_version="rag-v1", index_hash="x")
    [asked], _ = rag_records([rec], retrieval, tiny_tokenizer)

    assert "Leeds" in trained.messages[0]["content"] and "25 days of annual leave" in trained.messages[0]["content"]
    example = get_objective("sft").build([trained], tiny_tokenizer, 1024)[0][0]
    generator = Generator(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer)
    prompt_ids = generator.encode(asked.prompt_messages())  # exactly what the RAG variant is fed
    ids, targets = list(example.input_ids), list(example.targets)  # targets[i]: the token after ids[i]
    assert ids[: len(prompt_ids)] == prompt_ids
    n = len(prompt_ids)
    assert set(targets[: n - 1]) == {-100} and targets[n - 1] != -100  # the loss starts where generation does
    assert "25 days." in tiny_tokenizer.decode([t for t in targets if t != -100])


def test_the_mix_draws_exactly_the_shares_asked_and_is_seeded():
    cfg = _cfg(mix={"gold_with_distractors": 0.5, "distractors_only": 0.3, "no_context": 0.2})
    assert mix_counts(20, cfg) == {"gold_with_distractors": 10, "distractors_only": 6, "no_context": 4}
    assert sum(mix_counts(7, cfg).values()) == 7  # rounded so every example has one mode
    first = assign_modes(20, cfg, random.Random(3))
    assert first == assign_modes(20, cfg, random.Random(3))
    assert first != assign_modes(20, cfg, random.Random(4))

    records = [_record(f"Question {i}?", f"Answer {i}.", source=DOCS[i % 5][0]) for i in range(20)]
    hits = [_hits([(i + j) % 5 for j in range(5)]) for i in range(20)]
    out, stats = augment(records, hits, ROWS, cfg, RagConfig(top_k=2), None, seed=3)
    modes = [r.meta["rag_mode"] for r in out]
    assert stats["counts"] == {m: modes.count(m) for m in stats["counts"]} == mix_counts(20, cfg)
    for rec, source in zip(out, records, strict=True):
        question = rec.messages[0]["content"]
        if rec.meta["rag_mode"] == "no_context":
            assert question == source.messages[0]["content"]  # the bare question, as for plain tuning
        else:
            assert question.startswith("Answer the question using the context below")
        assert rec.messages[-1] == source.messages[-1]  # the answer is kept (no abstain asked)


def test_a_known_gold_passage_is_forced_in_and_kept_out_of_distractors():
    # retrieval ranks the gold document (leave.md) fourth: below the top 2
    records = [_record("How many days of leave?", "25 days.", source="leave.md")]
    hits = [_hits([2, 1, 3, 0, 4])]
    rag = RagConfig(top_k=2)
    only = {"gold_with_distractors": 1.0, "distractors_only": 0.0, "no_context": 0.0}
    [forced], stats = augment(records, hits, ROWS, _cfg(gold="auto", mix=only), rag, None, seed=0)
    assert "25 days of annual leave" in forced.messages[0]["content"] and "c0" in forced.meta["rag_chunk_ids"]
    assert len(forced.meta["rag_chunk_ids"]) == 2  # it replaced the last retrieved passage
    assert {k: stats[k] for k in ("gold_known", "gold_retrieved", "gold_forced", "gold_in_prompt")} == {
        "gold_known": 1, "gold_retrieved": 0, "gold_forced": 1, "gold_in_prompt": 1}

    [left], stats = augment(records, hits, ROWS, _cfg(gold="off", mix=only), rag, None, seed=0)
    assert "c0" not in left.meta["rag_chunk_ids"] and stats["gold_forced"] == 0  # retrieval decided

    # a chunk id from provenance (data synth) names the gold chunk itself
    by_id = [_record("Where is the office?", "Leeds.", chunk_id="c2", source="office.md")]
    [rec], stats = augment(by_id, [_hits([0, 1, 3, 4, 2])], ROWS, _cfg(mix=only), rag, None, seed=0)
    assert "c2" in rec.meta["rag_chunk_ids"] and stats["gold_forced"] == 1

    distract = {"gold_with_distractors": 0.0, "distractors_only": 1.0, "no_context": 0.0}
    [rec], _ = augment(records, [_hits([0, 1, 2, 3, 4])], ROWS, _cfg(mix=distract, abstain="I don't know."), rag,
                       None, seed=0)
    assert rec.meta["rag_chunk_ids"] == ["c1", "c2"] and rec.messages[-1]["content"] == "I don't know."


def test_gold_force_needs_every_record_to_name_its_gold():
    records = [_record("How many days of leave?", "25 days.", source="leave.md"),
               _record("Who are you?", "A bot.", line=7)]
    with pytest.raises(TunelabError, match=r"train.jsonl line 7 names no gold passage"):
        augment(records, [_hits([0, 1]), _hits([1, 0])], ROWS, _cfg(gold="force"), RagConfig(top_k=2),
                None, seed=0)


def test_the_matrix_gains_rag_aware_variants_and_the_plain_key_stays(tmp_path):
    def config(**data):
        return validate_data({"name": "m", "workdir": str(tmp_path), "rag": {"docs": str(tmp_path)},
                              "data": {"train": [str(tmp_path / "t.jsonl")], **data}})

    (tmp_path / "t.jsonl").write_text('{"prompt": "q", "completion": "a"}\n')
    plain, aware = config(), config(rag_context={"top_k": 2})
    assert [v.kind for v in build_matrix(plain)] == ["base", "base", "tuned", "tuned"]
    variants = build_matrix(aware)  # compare.rag_aware auto: on with data.rag_context
    assert [(v.kind, v.rag) for v in variants][-2:] == [(RAG_AWARE, False), (RAG_AWARE, True)]
    assert variants[-1].label.endswith("rag-aware tuned + RAG") and variants[-1].weights.parent.name == "train-rag-aware"
    assert build_matrix(config(rag_context={"top_k": 2}).model_copy(
        update={"compare": plain.compare.model_copy(update={"rag_aware": "off"})})) == build_matrix(plain)
    # the plain tuned model trains on the bare questions: setting data.rag_context does not retrain it
    assert train_key(training_config(aware, aware.model.name), "h") == train_key(training_config(plain, plain.model.name), "h")
    assert training_config(plain, plain.model.name, rag_aware=True).data.rag_context == RagContextConfig()



def test_tunelab_train_with_rag_context_trains_the_rag_aware_model(tmp_path, train_model_dir, monkeypatch):
    import json

    import yaml
    from tiny_runs import experiment_config
    from typer.testing import CliRunner

    from tunelab.cli.app import app

    monkeypatch.setenv("TUNELAB_THREADS", "1")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "france.md").write_text("# France\n\nThe capital of France is Paris.\n")
    (docs / "fox.md").write_text("# Fox\n\nThe quick brown fox jumps over the lazy dog.\n")
    config = experiment_config(tmp_path, train_model_dir, "aware", rag={"docs": str(docs), "top_k": 1},
                               data={"rag_context": {"mix": {"gold_with_distractors": 0.5, "distractors_only": 0.25,
                                                              "no_context": 0.25}}})
    path = tmp_path / "aware.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path), "--json"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "aware"
    counts = json.loads((run_dir / "summary.json").read_text())["rag_context"]["train"]["counts"]
    assert counts == {"gold_with_distractors": 4, "distractors_only": 2, "no_context": 2}
    trained = (run_dir / "data" / "rag-train.jsonl").read_text()
    assert trained.count("Context:") == 6 and (run_dir / "data" / "rag-context.json").is_file()


def test_rag_aware_without_documents_is_refused_before_any_work(tmp_path):
    from tunelab.pipeline import run

    (tmp_path / "t.jsonl").write_text('{"prompt": "q", "completion": "a"}\n')
    config = validate_data({"name": "m", "workdir": str(tmp_path / "runs"), "compare": {"rag_aware": "on"},
                            "data": {"train": [str(tmp_path / "t.jsonl")]}, "tracking": {"enabled": False}})
    with pytest.raises(TunelabError, match="compare.rag_aware trains with passages retrieved from rag.docs"):
        run(config)
    assert not (tmp_path / "runs").exists()


def test_the_reading_compares_rag_aware_with_plain_tuning(make_result):
    from tunelab.compare.table import build_comparison

    results = [make_result(kind, rag, scores) for kind, rag, scores in [
        ("tuned", False, [0.2, 0.3, 0.4, 0.5]), ("tuned", True, [0.2, 0.3, 0.3, 0.4]),
        (RAG_AWARE, False, [0.2, 0.3, 0.4, 0.5]), (RAG_AWARE, True, [0.6, 0.7, 0.8, 0.9])]]
    reading = build_comparison(results, ["rougeL"], None).reading
    assert any(s.startswith("RAG-aware tuning vs plain tuning (both with retrieval): tiny-model rag-aware tuned + RAG "
                            "beats tiny-model tuned + RAG on rougeL") for s in reading), reading
