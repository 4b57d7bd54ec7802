"""Field mappings: rows whose fields have other names than a format's, read as that format.

    data: {train: faq.csv, fields: {prompt: q, completion: a}}     # or --field prompt=q --field completion=a

maps format field -> source field, as LLaMA-Factory's dataset_info `columns` and Axolotl's custom
formats do. Each row's source fields are renamed before the format is detected, so the mapped row is
detected and validated like any other (the mapped source wins over a field already named like its
target). A mapped source missing (or null) on a row is a problem at that line naming the source field,
except for the fields a format treats as optional everywhere (input, system, context), which may be
absent on some rows as they may be in unmapped data. Problems the format finds in a mapped field name
the source field too (`field 'a': is empty (read as 'completion')`), so a user looks in their own
column. Mapped names must be fields of the formats (config.DATA_FIELDS); anything else is an error
naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..config import field_map_errors
from ..errors import Problem, TunelabError

OPTIONAL_FIELDS = frozenset({"input", "system", "context"})


class FieldMap:
    """A checked mapping {format field: source field} and the two things done with it per row."""

    def __init__(self, fields: Mapping[str, str]):
        errors = field_map_errors(dict(fields))
        if errors:
            raise TunelabError("field mapping: " + "; ".join(errors))
        self.fields = dict(fields)
        self._drop = frozenset(self.fields) | frozenset(self.fields.values())

    def apply(self, row: dict[str, Any], file: str, line: int | None) -> tuple[dict[str, Any], list[Problem]]:
        """The row with its source fields renamed, and a problem for each required source it lacks."""
        out = {k: v for k, v in row.items() if k not in self._drop}
        problems = []
        for key, source in self.fields.items():
            value = row.get(source)
            if value is not None:
                out[key] = value
            elif key not in OPTIONAL_FIELDS:
                how = "is null" if source in row else "missing required field"
                problems.append(Problem(file, line, source, f"{how} (read as '{key}')", "missing_field"))
        return out, problems

    def relabel(self, problems: list[Problem]) -> list[Problem]:
        """Problems found in the mapped row, pointing at the source fields they came from."""
        return [self._relabel(p) for p in problems]

    def _relabel(self, problem: Problem) -> Problem:
        path = problem.field or ""
        for key, source in self.fields.items():
            if path == key or path.startswith((f"{key}[", f"{key}.")):
                field = source + path[len(key) :]
                return dataclasses.replace(problem, field=field, message=f"{problem.message} (read as '{key}')")
        return problem
