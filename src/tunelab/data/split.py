"""Deterministic train/validation/test splitting: plain, stratified by label, or grouped by a meta field.

- Plain: shuffle with the seed, then cut by the ratios (largest-remainder rounding, so the sizes add up
  to the number of records and each is within one record of its exact share).
- Stratified (default for classification data): shuffled within each label and dealt so that every
  label, and the whole, is split in the ratios to within a record or two.
- Grouped (`group_by="source"`, for example): whole groups are shuffled and dealt to splits, so every
  record of a group lands in the same split. This is what keeps chunks of one document, or turns of
  one conversation, out of both train and test; split sizes then follow the ratios only as closely
  as the group sizes allow.

A split with ratio > 0 gets at least one record (or group) whenever there are enough to go round, so
asking for a validation split never silently yields an empty one. Records keep their input order
inside each split, which keeps the output files easy to diff.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Hashable, Sequence
from typing import Any

from ..errors import TunelabError
from .records import Record


def split_records(
    records: Sequence[Record],
    ratios: dict[str, float],
    seed: int,
    *,
    stratify: bool | None = None,
    group_by: str | None = None,
) -> dict[str, list[Record]]:
    """Split `records` by `ratios` (e.g. {"train": .9, "validation": .1, "test": 0}).

    Every name in `ratios` is in the result, in that order, even when its list is empty."""
    _check_ratios(ratios)
    if stratify is None:
        stratify = group_by is None and bool(records) and all(r.kind == "label" for r in records)
    if stratify and group_by is not None:
        raise TunelabError(
            "split.stratify and split.group_by cannot be combined: groups decide the split of their records; "
            "set one of them"
        )
    rng = random.Random(seed)
    if group_by is not None:
        assignment = _split_groups(records, ratios, rng, group_by)
    elif stratify:
        assignment = _split_stratified(records, ratios, rng)
    else:
        assignment = _deal(list(range(len(records))), ratios, rng)
    out: dict[str, list[Record]] = {name: [] for name in ratios}
    for index, name in sorted(assignment.items()):
        out[name].append(records[index])
    return out


def _check_ratios(ratios: dict[str, float]) -> None:
    if not ratios:
        raise TunelabError("no split ratios given: pass e.g. {'train': 0.9, 'validation': 0.1}")
    for name, value in ratios.items():
        if not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise TunelabError(f"split ratio for '{name}' must be a number >= 0, got {value!r}")
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        shown = ", ".join(f"{k}={v:g}" for k, v in ratios.items())
        raise TunelabError(f"split ratios must sum to 1, got {total:g} ({shown}); adjust them")


def allocate(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """Split n items into integer counts by ratios: largest remainder, then >= 1 for each ratio > 0
    while enough items exist (taken from the largest split)."""
    exact = {name: n * r for name, r in ratios.items()}
    counts = {name: math.floor(v) for name, v in exact.items()}
    left = n - sum(counts.values())
    # Ties go to the larger ratio, then to the earlier name: deterministic.
    order = sorted(ratios, key=lambda k: (-(exact[k] - counts[k]), -ratios[k], list(ratios).index(k)))
    for name in order[:left]:
        counts[name] += 1
    wanted = [name for name, r in ratios.items() if r > 0]
    if n >= len(wanted):
        for name in wanted:
            if counts[name] == 0:
                donor = max(counts, key=lambda k: counts[k])
                counts[donor] -= 1
                counts[name] += 1
    return counts


def _deal(indices: list[int], ratios: dict[str, float], rng: random.Random) -> dict[int, str]:
    """Shuffle `indices` and cut them into consecutive runs sized by `allocate`."""
    rng.shuffle(indices)
    out: dict[int, str] = {}
    pos = 0
    for name, count in allocate(len(indices), ratios).items():
        for index in indices[pos : pos + count]:
            out[index] = name
        pos += count
    return out


def _split_stratified(
    records: Sequence[Record], ratios: dict[str, float], rng: random.Random
) -> dict[int, str]:
    """Shuffle within each label, line the labels up, and deal the line by smooth weighted round robin.

    Each record goes to the split that is furthest behind its target share of the records dealt so far,
    so every prefix of the line (hence every label, which is a contiguous stretch of it) is split within
    a record or two of the ratios, and the totals are as close to the ratios as integers allow. Cutting
    each label separately would round each label on its own and let small labels pile up in train.
    """
    by_label: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if rec.kind != "label" or rec.label is None:
            raise TunelabError(
                f"stratified splitting needs labelled records, but record {_where(rec, i)} is a {rec.kind} "
                "record; set split.stratify to false"
            )
        by_label.setdefault(rec.label, []).append(i)
    line: list[int] = []
    for label in sorted(by_label):  # sorted: the result must not depend on which label came first
        members = by_label[label]
        rng.shuffle(members)
        line += members
    active = [name for name, r in ratios.items() if r > 0]
    dealt = dict.fromkeys(ratios, 0)
    out: dict[int, str] = {}
    for k, index in enumerate(line, start=1):
        name = max(active, key=lambda j: (k * ratios[j] - dealt[j], ratios[j]))
        dealt[name] += 1
        out[index] = name
    _ensure_each_split(out, line, ratios)
    return out


def _ensure_each_split(out: dict[int, str], line: list[int], ratios: dict[str, float]) -> None:
    """Give an empty split with ratio > 0 the last-dealt record of the largest split, if enough records."""
    wanted = [name for name, r in ratios.items() if r > 0]
    if len(line) < len(wanted):
        return
    for name in wanted:
        sizes = {n: 0 for n in ratios}
        for v in out.values():
            sizes[v] += 1
        if sizes[name] == 0:
            donor = max(ratios, key=lambda n: sizes[n])
            last = next(i for i in reversed(line) if out[i] == donor)
            out[last] = name


def _group_key(value: Any) -> Hashable:
    """Meta values may be lists or dicts (from JSON); group them by their canonical JSON text."""
    if isinstance(value, str | int | float | bool):
        return (type(value).__name__, value)
    return ("json", json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))


def _split_groups(
    records: Sequence[Record], ratios: dict[str, float], rng: random.Random, field: str
) -> dict[int, str]:
    groups: dict[Hashable, list[int]] = {}
    for i, rec in enumerate(records):
        if field not in rec.meta:
            raise TunelabError(
                f"split.group_by is '{field}', but record {_where(rec, i)} has no field '{field}'; "
                f"give every record a '{field}' or drop split.group_by"
            )
        groups.setdefault(_group_key(rec.meta[field]), []).append(i)
    keys = sorted(groups, key=str)
    rng.shuffle(keys)
    sizes = [len(groups[k]) for k in keys]
    out: dict[int, str] = {}
    for key, name in zip(keys, _assign_groups(sizes, ratios), strict=True):
        for index in groups[key]:
            out[index] = name
    return out


def _assign_groups(sizes: list[int], ratios: dict[str, float]) -> list[str]:
    """Deal shuffled groups to splits: a group goes to the split whose share of the record line holds its
    midpoint; then make sure every split with a ratio > 0 has a group, if there are enough."""
    total = sum(sizes)
    names = list(ratios)
    bounds, acc = [], 0.0
    for name in names:
        acc += ratios[name] * total
        bounds.append(acc)
    out: list[str] = []
    pos = 0
    for size in sizes:
        mid = pos + size / 2
        k = next((j for j, b in enumerate(bounds) if mid < b and ratios[names[j]] > 0), None)
        if k is None:
            k = max(j for j in range(len(names)) if ratios[names[j]] > 0)
        out.append(names[k])
        pos += size
    wanted = [name for name in names if ratios[name] > 0]
    if len(sizes) >= len(wanted):
        for name in wanted:
            if name not in out:
                _steal_group(out, sizes, name)
    return out


def _steal_group(out: list[str], sizes: list[int], name: str) -> None:
    """Give `name` the smallest group of the split that holds the most groups (it can spare one)."""
    counts = {n: out.count(n) for n in set(out)}
    donor = max(sorted(counts), key=lambda n: counts[n])
    if counts[donor] < 2:
        return
    smallest = min((i for i, n in enumerate(out) if n == donor), key=lambda i: (sizes[i], i))
    out[smallest] = name


def _where(rec: Record, index: int) -> str:
    file, line = rec.meta.get("file"), rec.meta.get("line")
    if file is not None:
        return f"{file}:{line}" if line is not None else str(file)
    return f"#{index + 1}"
