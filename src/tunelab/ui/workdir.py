"""What the web app reads from a workdir, and nothing outside it.

An experiment is a directory `<workdir>/<name>/` with `compare/comparison.json` (what `tunelab run` and
`tunelab compare` write); its answers are `eval/<variant id>/predictions.jsonl`. The experiment list
stats only the small comparison.json files and parses those of the page shown (cached by modification
time), so a workdir with hundreds of runs lists fast. Every path is resolved and must stay inside the
workdir: names with separators or `..`, and symlinks pointing out, are refused as not found.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compare.comparison import Comparison

COMPARISON = Path("compare") / "comparison.json"
_NAME = re.compile(r"^[A-Za-z0-9_.@+-]{1,255}$")


class NotFound(Exception):
    """Nothing the app may show at that name (missing, outside the workdir, or not a valid name)."""


def inside(root: Path, relative: str | Path) -> Path:
    """`root / relative` resolved, if it stays inside `root` (symlinks followed); else NotFound."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts:
        raise NotFound(str(relative))
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise NotFound(str(relative))
    return target


@dataclass
class Summary:
    name: str
    n: int
    primary: str
    variants: list[str]
    best: str | None
    modified: float


@dataclass
class Experiment:
    name: str
    path: Path
    comparison: Comparison
    variants: list[dict[str, Any]]  # the comparison's rows: label ("variant"), id, rag, ...
    answers: dict[str, dict[str, dict[str, Any]]]  # variant label -> question id -> predictions row
    train_logs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stamp: tuple = ()
    cache: dict[str, Any] = field(default_factory=dict)  # rendered pieces (plots), as long as the files hold

    def question_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for per in self.answers.values():
            seen.update(dict.fromkeys(per))
        return list(seen)

    def question(self, qid: str) -> dict[str, Any]:
        """Question text and reference of `qid`, from the first variant that has the row."""
        for per in self.answers.values():
            row = per.get(qid)
            if row is not None:
                return {"question": question_text(row), "reference": str(row.get("reference") or "")}
        raise NotFound(qid)


def question_text(row: dict[str, Any]) -> str:
    if row.get("question") is not None:
        return str(row["question"])  # compare stores the plain question, without retrieved context
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt:
        return str(prompt[-1].get("content", ""))
    return str(prompt or "")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue  # a damaged line is left out of the page, not fatal
        if isinstance(row, dict):
            rows.append(row)
    return rows


class Workdir:
    """The experiments of one workdir, with small caches keyed by file modification times."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            from ..errors import TunelabError

            raise TunelabError(f"{root}: not a directory (give the workdir your experiments write to)")
        self._summaries: dict[str, tuple[tuple, Summary]] = {}
        self._experiments: dict[str, Experiment] = {}
        self._lock = threading.Lock()

    def experiment_dir(self, name: str) -> Path:
        if not _NAME.match(name) or name in (".", ".."):
            raise NotFound(name)
        path = inside(self.root, name)
        if not (path / COMPARISON).is_file():
            raise NotFound(name)
        return path

    def _listing(self) -> list[tuple[float, str, tuple]]:
        out = []
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return out
        for entry in entries:
            if not _NAME.match(entry.name):
                continue
            try:
                path = inside(self.root, entry.name)
                st = (path / COMPARISON).stat()
            except (NotFound, OSError):
                continue
            out.append((st.st_mtime, entry.name, (st.st_mtime_ns, st.st_size)))
        out.sort(key=lambda t: (-t[0], t[1]))  # newest first
        return out

    def summaries(self, page: int, per_page: int = 50) -> tuple[list[Summary], int]:
        """One page of experiment summaries (newest first) and the number of experiments."""
        listing = self._listing()
        start = max(0, (page - 1) * per_page)
        out = []
        for modified, name, stamp in listing[start:start + per_page]:
            cached = self._summaries.get(name)
            if cached is None or cached[0] != stamp:
                data = _read_json(self.root / name / COMPARISON) or {}
                rows = data.get("rows") or []
                primary = str(data.get("primary_metric") or "")
                best = _best(rows, primary)
                cached = (stamp, Summary(name, int(data.get("n") or 0), primary,
                                         [str(r.get("variant")) for r in rows], best, modified))
                self._summaries[name] = cached
            out.append(cached[1])
        return out, len(listing)

    def _stamp(self, path: Path, comparison: dict[str, Any]) -> tuple:
        files = [path / COMPARISON] + [path / "eval" / str(r.get("id")) / "predictions.jsonl"
                                       for r in comparison.get("rows") or []]
        out = []
        for f in files:
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), None, None))
        return tuple(out)

    def experiment(self, name: str) -> Experiment:
        path = self.experiment_dir(name)
        data = _read_json(path / COMPARISON)
        if not isinstance(data, dict):
            raise NotFound(name)
        stamp = self._stamp(path, data)
        with self._lock:
            cached = self._experiments.get(name)
            if cached is not None and cached.stamp == stamp:
                return cached
        comparison = Comparison.from_dict(data)
        answers: dict[str, dict[str, dict[str, Any]]] = {}
        logs: dict[str, list[dict[str, Any]]] = {}
        for row in comparison.rows:
            label, vid = str(row.get("variant")), str(row.get("id"))
            try:
                eval_dir = inside(path, Path("eval") / vid)
            except NotFound:
                continue
            rows = _read_jsonl(eval_dir / "predictions.jsonl")
            answers[label] = {str(r.get("index", i)): r for i, r in enumerate(rows)}
            if row.get("kind") != "base" and not row.get("rag"):
                log = self._train_log(eval_dir)
                if log:
                    logs[label] = log
        exp = Experiment(name, path, comparison, list(comparison.rows), answers, logs, stamp)
        with self._lock:
            self._experiments[name] = exp
        return exp

    def _train_log(self, eval_dir: Path) -> list[dict[str, Any]]:
        """The training log next to a tuned variant's weights, when those are inside the workdir."""
        summary = _read_json(eval_dir / "summary.json") or {}
        weights = (summary.get("variant") or {}).get("weights")
        if not weights:
            return []
        path = Path(weights).resolve() / "train_log.jsonl"
        if not path.is_relative_to(self.root) or not path.is_file():
            return []
        return [r for r in _read_jsonl(path) if "step" in r]


def _best(rows: list[dict[str, Any]], metric: str) -> str | None:
    scored = []
    for r in rows:
        cell = (r.get("metrics") or {}).get(metric) or {}
        if isinstance(cell.get("value"), int | float):
            sign = 1 if cell.get("higher_is_better", True) else -1
            scored.append((sign * cell["value"], str(r.get("variant"))))
    return max(scored)[1] if scored else None
