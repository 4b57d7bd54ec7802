"""Splitting: ratios, determinism, stratification and groups."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.records import Record
from tunelab.data.split import allocate, split_records
from tunelab.errors import TunelabError

RATIOS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def texts(n: int, **meta) -> list[Record]:
    return [Record(kind="text", text=f"record {i}", meta={"line": i + 1, **meta}) for i in range(n)]


def labelled(counts: dict[str, int]) -> list[Record]:
    out = []
    for label, n in counts.items():
        out += [
            Record(kind="label", text=f"{label} {i}", label=label, meta={"line": len(out) + i})
            for i in range(n)
        ]
    return out


def lines(records: list[Record]) -> list[int]:
    return [r.meta["line"] for r in records]


def test_sizes_follow_the_ratios_and_every_record_lands_once() -> None:
    records = texts(1000)
    splits = split_records(records, RATIOS, seed=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "validation": 100, "test": 100}
    all_lines = sorted(line for recs in splits.values() for line in lines(recs))
    assert all_lines == list(range(1, 1001))


def test_records_keep_input_order_inside_a_split() -> None:
    splits = split_records(texts(200), RATIOS, seed=4)
    for recs in splits.values():
        assert lines(recs) == sorted(lines(recs))


def test_same_seed_same_split_other_seed_other_split() -> None:
    records = texts(300)
    a = split_records(records, RATIOS, seed=7)
    b = split_records(records, RATIOS, seed=7)
    c = split_records(records, RATIOS, seed=8)
    assert {k: lines(v) for k, v in a.items()} == {k: lines(v) for k, v in b.items()}
    assert lines(a["validation"]) != lines(c["validation"])


def test_zero_ratio_split_is_present_and_empty() -> None:
    splits = split_records(texts(50), {"train": 0.9, "validation": 0.1, "test": 0.0}, seed=0)
    assert set(splits) == {"train", "validation", "test"}
    assert splits["test"] == [] and len(splits["validation"]) == 5


def test_small_inputs_still_fill_every_requested_split() -> None:
    splits = split_records(texts(5), {"train": 0.9, "validation": 0.05, "test": 0.05}, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "validation": 1, "test": 1}
    assert allocate(0, RATIOS) == {"train": 0, "validation": 0, "test": 0}
    assert allocate(1, RATIOS) == {"train": 1, "validation": 0, "test": 0}


@pytest.mark.parametrize(
    "ratios", [{"train": 0.9, "validation": 0.2}, {"train": 0.5}, {"train": 1.2, "test": -0.2}, {}]
)
def test_bad_ratios_raise(ratios: dict[str, float]) -> None:
    with pytest.raises(TunelabError, match="ratio"):
        split_records(texts(10), ratios, seed=0)


def test_stratification_keeps_label_proportions() -> None:
    records = labelled({"billing": 600, "tech": 300, "legal": 100})
    splits = split_records(records, RATIOS, seed=3)  # auto: all records are labelled
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "validation": 100, "test": 100}
    for name, share in RATIOS.items():
        got = Counter(r.label for r in splits[name])
        for label, total in {"billing": 600, "tech": 300, "legal": 100}.items():
            assert abs(got[label] - total * share) <= 1.5, (name, label, got)


def test_stratification_spreads_rare_labels_instead_of_piling_them_in_train() -> None:
    records = labelled({f"rare{i}": 2 for i in range(20)} | {"common": 160})
    splits = split_records(records, {"train": 0.9, "validation": 0.1}, seed=0)
    assert len(splits["validation"]) == 20
    assert Counter(r.label for r in splits["validation"])["common"] == 16


def test_stratify_on_unlabelled_records_is_an_error() -> None:
    with pytest.raises(TunelabError, match="stratify"):
        split_records(texts(10), RATIOS, seed=0, stratify=True)


def test_not_stratified_when_asked() -> None:
    records = labelled({"a": 50, "b": 50})
    splits = split_records(records, {"train": 0.5, "validation": 0.5}, seed=0, stratify=False)
    assert len(splits["train"]) == 50


def test_group_by_keeps_groups_together() -> None:
    records = []
    for doc in range(40):
        records += [
            Record(kind="chat", messages=[], meta={"source": f"doc{doc}.pdf", "chunk": c})
            for c in range(doc % 5 + 1)
        ]
    splits = split_records(records, RATIOS, seed=2, group_by="source")
    where: dict[str, set[str]] = {}
    for name, recs in splits.items():
        for r in recs:
            where.setdefault(r.meta["source"], set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    assert len(where) == 40
    total = len(records)
    assert abs(len(splits["train"]) - 0.8 * total) <= 6  # groups are at most 5 records
    assert splits["validation"] and splits["test"]
    again = split_records(records, RATIOS, seed=2, group_by="source")
    assert [id(r) for r in again["test"]] == [id(r) for r in splits["test"]]


def test_group_by_accepts_unhashable_values() -> None:
    records = [Record(kind="text", text=str(i), meta={"tags": ["x", i % 3]}) for i in range(30)]
    splits = split_records(records, {"train": 0.7, "test": 0.3}, seed=0, group_by="tags")
    groups = {name: {r.meta["tags"][1] for r in recs} for name, recs in splits.items()}
    assert not groups["train"] & groups["test"]


def test_group_by_missing_field_names_the_field_and_record() -> None:
    records = texts(3, source="a.pdf") + [Record(kind="text", text="x", meta={"file": "in.jsonl", "line": 9})]
    with pytest.raises(TunelabError, match=r"in\.jsonl:9.*'source'"):
        split_records(records, RATIOS, seed=0, group_by="source")


def test_group_by_and_stratify_together_is_an_error() -> None:
    with pytest.raises(TunelabError, match="group_by"):
        split_records(labelled({"a": 4}), RATIOS, seed=0, stratify=True, group_by="source")


def test_empty_input_gives_empty_splits() -> None:
    assert split_records([], RATIOS, seed=0) == {"train": [], "validation": [], "test": []}
