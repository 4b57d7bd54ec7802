"""Reply schemas of the generation modes, candidate records, and held-out section selection."""

from __future__ import annotations

import pytest

from tunelab.config import SynthConfig
from tunelab.data.formats import to_record
from tunelab.documents.chunk import Chunk
from tunelab.errors import TunelabError
from tunelab.llm.structured import INVALID_JSON, SCHEMA_MISMATCH, parse_reply
from tunelab.synth.evalset import hold_out, sample_for_paraphrase
from tunelab.synth.generate import MODES, Provenance, _label_check

CHUNK = Chunk("c1", "doc.md", ("Leave", "Annual"), "Employees get 27 days of leave.", 8, 0, 31)
PROV = Provenance("openai:t@http://x/v1", "qa/1", "qa")


def test_schemas_accept_the_asked_shape_a_bare_item_and_extra_keys_but_nothing_blank():
    qa = MODES["qa"].schema
    value, kind, _ = parse_reply('Here you go:\n```json\n{"pairs": [{"question": "Q?", "answer": "A.", "why": 1}]}\n```', qa)
    assert kind is None and [(p.question, p.answer) for p in value.items()] == [("Q?", "A.")]
    value, kind, _ = parse_reply('{"question": "Q?", "answer": "A."}', qa)  # a bare pair: a list of one
    assert kind is None and len(value.items()) == 1
    for bad, why in (('{"pairs": []}', "at least 1"), ('{"pairs": [{"question": "Q?", "answer": "  "}]}', "at least 1"),
                     ('{"pairs": [{"question": "Q?"}]}', "answer: Field required"), ('["x"]', "expected a JSON object")):
        value, kind, error = parse_reply(bad, qa)
        assert value is None and kind == SCHEMA_MISMATCH and why in error, (bad, error)
    assert parse_reply("no json here", qa)[1] == INVALID_JSON
    multi = MODES["multi_turn"].schema
    assert parse_reply('{"conversations": [{"turns": [{"user": "u", "assistant": "a"}]}]}', multi)[1] == SCHEMA_MISMATCH
    pref = MODES["preference"].schema
    value, _, _ = parse_reply('{"items": [{"question": "Q?", "chosen": "c", "rejected": "r"}]}', pref)
    assert value.items()[0].rejected == "r"


def test_labels_must_come_from_the_set_and_are_written_as_the_set_spells_them():
    schema = MODES["labelled"].schema
    check = _label_check(["Billing", "IT"])
    value, _, _ = parse_reply('{"examples": [{"text": "t1", "label": "billing"}, {"text": "t2", "label": "it"}]}', schema)
    assert check(0, value) is None and [e.label for e in value.items()] == ["Billing", "IT"]
    value, _, _ = parse_reply('{"examples": [{"text": "t1", "label": "hr"}]}', schema)
    assert "'hr' not in the label set: Billing, IT" in check(0, value)


@pytest.mark.parametrize("mode,reply", [
    ("qa", {"question": "How many days?", "answer": "27 days."}),
    ("instruction", {"instruction": "Summarise the leave policy.", "input": "Ann asks.", "response": "27 days."}),
    ("multi_turn", {"turns": [{"user": "Leave?", "assistant": "27 days."}, {"user": "More?", "assistant": "No."}]}),
    ("labelled", {"text": "How many days of leave do I get?", "label": "hr"}),
    ("preference", {"question": "How many days?", "chosen": "27 days.", "rejected": "30 days."}),
])
def test_candidates_become_rows_the_data_layer_accepts_with_provenance(mode, reply):
    m = MODES[mode]
    item = m.schema.model_validate(reply).items()[0]
    cand = m.build(item, CHUNK, PROV.meta(CHUNK))
    cand.checks["overlap"] = 1.0
    row = cand.to_row()
    record, problems = to_record(row, {"chat": "chat", "label": "label", "preference": "preference"}[m.kind], "f", 1)
    assert problems == [] and record.kind == m.kind
    assert record.meta["chunk_id"] == "c1" and record.meta["source"] == "doc.md" and record.meta["heading"] == "Leave > Annual"
    assert record.meta["teacher"] == PROV.teacher and record.meta["prompt_version"] == "qa/1"
    assert record.meta["grounding"] == {"overlap": 1.0}
    if mode == "instruction":  # the input goes with the instruction, and counts as source for grounding
        assert record.messages[0]["content"] == "Summarise the leave policy.\n\nAnn asks." and "Ann asks." in cand.source_text()
    if mode == "multi_turn":
        assert cand.questions == ["Leave?", "More?"] and cand.answers == ["27 days.", "No."]


def _chunks(sections: list[tuple[str, str, int]]) -> list[Chunk]:
    return [Chunk(f"{doc}-{head}-{i}", doc, (head,), f"text {doc} {head} {i}", 10, 0, 1)
            for doc, head, n in sections for i in range(n)]


def test_held_out_takes_whole_sections_deterministically():
    chunks = _chunks([("a.md", "one", 3), ("a.md", "two", 1), ("b.md", "one", 2), ("b.md", "three", 4)])
    train, evals = hold_out(chunks, 0.2, seed=1)
    assert len(train) + len(evals) == 10 and evals
    held = {(c.doc, c.heading) for c in evals}
    assert all((c.doc, c.heading) not in held for c in train)  # a section is all in or all out
    assert hold_out(chunks, 0.2, seed=1) == (train, evals)
    assert any(hold_out(chunks, 0.2, seed=s)[1] != evals for s in range(2, 8))  # the seed decides
    _, most = hold_out(chunks, 0.99, seed=1)
    assert len({(c.doc, c.heading) for c in most}) == 3  # never every section
    with pytest.raises(TunelabError, match="at least two sections"):
        hold_out(_chunks([("a.md", "one", 5)]), 0.5, seed=1)


def test_paraphrase_sample_is_seeded_and_in_order():
    cands = [MODES["qa"].build(MODES["qa"].schema.model_validate({"question": f"Q{i}?", "answer": "A."}).items()[0],
                               CHUNK, {}) for i in range(10)]
    sample = sample_for_paraphrase(cands, 0.25, seed=3)
    assert len(sample) == 3 and sample == sorted(sample, key=cands.index)
    assert sample == sample_for_paraphrase(cands, 0.25, seed=3)


def test_config_rules():
    base = {"docs": "d", "teacher": "openai:m@http://h/v1"}
    assert SynthConfig.model_validate(base).teacher.spec == "openai:m@http://h/v1"
    for over, msg in (({"chunk_overlap": 300}, "chunk_overlap"), ({"mode": "labelled"}, "needs labels"),
                      ({"mode": "labelled", "labels": ["a", "A"]}, "repeat"), ({"labels": ["a", "b"]}, "only used"),
                      ({"mode": "preference", "eval_set": "paraphrase"}, "held_out"),
                      ({"teacher": "nope:m"}, "unknown backend kind")):
        with pytest.raises(ValueError, match=msg):
            SynthConfig.model_validate({**base, **over})
