"""The benchmarks by their lm-eval task names, where their data files are found, and reading them.

Lookup order for a benchmark's data file (tunelab never looks beside its own install or repository):
1. a file the user names for that benchmark (`--benchmark-path NAME=FILE`, config `eval.benchmark_paths`);
2. a directory the user names (`--benchmark-dir`; only there: a user who names a directory means it);
3. $TUNELAB_BENCHMARK_DIR, then tunelab's download cache (<tunelab home>/benchmarks);
4. with a network, the public Hugging Face dataset lm-eval loads, fetched once into that cache.
Nothing found and nothing fetched: a TunelabError that names the file to get (its name, fields and
Hugging Face dataset), how to get it and where to put it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...errors import InputError, Problem, TunelabError
from ...io import write_jsonl
from ...paths import tunelab_home
from . import arc, hellaswag, truthfulqa
from .base import Benchmark, Item, RowError

ENV_DIR = "TUNELAB_BENCHMARK_DIR"
_MAX_PROBLEMS = 20

REGISTRY: dict[str, Benchmark] = {b.name: b for m in (truthfulqa, hellaswag, arc) for b in m.BENCHMARKS}


def list_benchmarks() -> list[str]:
    return list(REGISTRY)


def get_benchmark(name: str) -> Benchmark:
    try:
        return REGISTRY[name]
    except KeyError:
        raise TunelabError(
            f"unknown benchmark '{name}'; choose from: {', '.join(REGISTRY)} (lm-evaluation-harness task names)"
        ) from None


def download_cache() -> Path:
    """<tunelab home>/benchmarks, created: the error messages tell users to save files there."""
    path = tunelab_home() / "benchmarks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_dirs() -> list[Path]:
    """Where benchmark files are looked for when no directory is given, in order."""
    dirs = []
    if os.environ.get(ENV_DIR):
        dirs.append(Path(os.environ[ENV_DIR]).expanduser())
    dirs.append(download_cache())
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_data_file(
    bench: Benchmark, benchmark_dir: str | os.PathLike | None = None, path: str | os.PathLike | None = None
) -> Path:
    """The data file for `bench` (see the module docstring for the order); fetches when allowed."""
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise TunelabError(f"{bench.name}: data file {file} does not exist")
        return file
    dirs = [Path(benchmark_dir).expanduser()] if benchmark_dir is not None else default_dirs()
    for d in dirs:
        for name in bench.filenames:
            if (d / name).is_file():
                return d / name
    if benchmark_dir is not None:
        raise TunelabError(
            f"{bench.name}: none of {', '.join(bench.filenames)} is in {dirs[0]}. " + how_to_get(bench, dirs[0])
        )
    return _fetch(bench, dirs)


def how_to_get(bench: Benchmark, target: Path | None = None) -> str:
    """Which file `bench` needs (name, fields, the Hugging Face dataset it comes from), how to get it and
    where to put it: the part of every "not found" error that lets the user fix it."""
    target = target or download_cache()
    name = bench.filenames[0]
    sentences = [f"It needs {name}: {bench.data_format}."]
    if bench.hf_source is not None:
        dataset, config, split = bench.hf_source
        args = f"'{dataset}', " + (f"'{config}', " if config else "") + f"split='{split}'"
        sentences.append(
            f"It is the {split} split of the Hugging Face dataset {dataset}"
            + (f" (config {config})" if config else "")
            + f"; with a network, save it with: python -c \"from datasets import load_dataset; "
            f"load_dataset({args}).to_json('{target / name}')\"."
        )
    sentences.append(
        f"Put the file in {target} (or in the directory ${ENV_DIR} names), or pass its path: "
        f"--benchmark-path {bench.name}=FILE (config: eval.benchmark_paths: {{{bench.name}: FILE}})."
    )
    return " ".join(sentences)


def _offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _fetch(bench: Benchmark, searched: list[Path]) -> Path:
    where = f"{bench.name}: no {' or '.join(bench.filenames)} in {', '.join(str(d) for d in searched)}"
    if bench.hf_source is None:
        raise TunelabError(f"{where}. {how_to_get(bench)}")
    dataset, config, split = bench.hf_source
    if _offline():
        raise TunelabError(f"{where}, and fetching {dataset} from the Hugging Face hub is off (offline mode). "
                           + how_to_get(bench))
    try:
        from datasets import load_dataset

        rows = load_dataset(dataset, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure here means "no network copy"; say why
        raise TunelabError(
            f"{where}, and fetching {dataset} ({config or 'default'}, {split}) from the Hugging Face hub "
            f"failed: {type(exc).__name__}: {exc}. " + how_to_get(bench)
        ) from exc
    target = download_cache() / bench.filenames[0]
    write_jsonl(target, (dict(r) for r in rows))
    return target


def _read_rows(file: Path, limit: int | None):
    """(line number, row dict or Problem) for the first `limit` non-blank lines of a JSONL file."""
    count = 0
    try:
        handle = file.open("rb")
    except OSError as exc:
        raise TunelabError(f"cannot read {file}: {exc}") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            if limit is not None and count >= limit:
                return
            if not raw.strip():
                continue
            count += 1
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield lineno, Problem(str(file), lineno, None, f"not a JSON line: {exc}")
                continue
            if not isinstance(row, dict):
                yield (
                    lineno,
                    Problem(str(file), lineno, None, f"expected a JSON object, got {type(row).__name__}"),
                )
                continue
            yield lineno, row


def load_items(bench: Benchmark, file: str | os.PathLike, limit: int | None = None) -> list[Item]:
    """The first `limit` items of a benchmark file; every malformed row is reported with its line."""
    if limit is not None and limit < 1:
        raise TunelabError(f"limit must be at least 1, got {limit}")
    file = Path(file)
    if file.suffix not in (".jsonl", ".json", ".ndjson"):
        raise TunelabError(f"{file}: benchmark files are JSONL (one JSON object per line)")
    items: list[Item] = []
    problems: list[Problem] = []
    total = 0
    for index, (lineno, row) in enumerate(_read_rows(file, limit)):
        if isinstance(row, Problem):
            total += 1
            if len(problems) < _MAX_PROBLEMS:
                problems.append(row)
            continue
        try:
            items.append(bench.parse(row, index))
        except RowError as exc:
            total += 1
            if len(problems) < _MAX_PROBLEMS:
                problems.append(Problem(str(file), lineno, exc.field, exc.message))
    if problems:
        raise InputError(
            problems,
            total=total,
            header=f"{file} is not in {bench.name}'s format ({total} bad row(s)):",
        )
    if not items:
        raise TunelabError(f"{file}: no rows to score")
    return items


def resolve_items(
    name: str,
    *,
    limit: int | None = None,
    benchmark_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
) -> tuple[Benchmark, Path, list[Item]]:
    bench = get_benchmark(name)
    file = find_data_file(bench, benchmark_dir, path)
    return bench, file, load_items(bench, file, limit)


def describe() -> list[dict[str, Any]]:
    """One row per benchmark, for `tunelab eval --list-benchmarks` style output."""
    return [
        {"name": b.name, "description": b.description, "metrics": list(b.metrics), "files": list(b.filenames)}
        for b in REGISTRY.values()
    ]
