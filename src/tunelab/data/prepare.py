"""`data prepare`: inputs in any supported format -> a versioned dataset directory.

Order matters and is fixed: read + validate -> clean -> scrub PII -> exact dedup -> split -> near dedup
inside each split -> remove eval records that leak from train -> (optional) render stats for a model ->
write. Scrubbing comes before dedup so two records that differ only in an e-mail address count as
duplicates; leak removal comes last so it sees the final training split.

Inputs may be files, saved Hugging Face dataset directories, a directory `tunelab data synth` wrote
(inputs.py) or a server's feedback database (feedback.py: its preference pairs); rows are read in any format of formats.py, through the config's field mapping if any.

The output directory holds one JSONL file per split (canonical records), `leaks.jsonl` (what was removed
from eval splits and why) and `manifest.json` (counts in and out, removals by reason, PII counts, the
content hash that versions the dataset, and the resolved options). It is built in a temporary directory
and renamed into place: a failed run writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import TunelabError
from ..io import atomic_dir, check_output_dir, write_json, write_jsonl
from .auto_split import resolve_split
from .inputs import expand_inputs
from .records import Record

SPLIT_ORDER = ("train", "validation", "test", "eval")
MANIFEST = "manifest.json"
OUTPUT_KIND = "prepare"  # the marker kind of a prepared dataset directory (tunelab.io.check_output_dir)


@dataclass
class PrepareResult:
    out_dir: Path
    splits: dict[str, int]
    manifest: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "splits": self.splits,
            "files": [str(f) for f in self.files],
            "dataset_hash": self.manifest["dataset_hash"],
            "removed": self.manifest["removed"],
            "pii": self.manifest["pii"],
            "skipped_invalid": self.manifest["skipped_invalid"],
            "tokens": self.manifest.get("tokens"),
        }


def _record_lines(records: list[Record]) -> list[dict]:
    return [r.to_dict() for r in records]


def dataset_hash(split_rows: dict[str, list[dict]]) -> str:
    """Content hash over every split, in a fixed order: the dataset's version."""
    h = hashlib.sha256()
    for name in SPLIT_ORDER:
        if name in split_rows:
            h.update(name.encode())
            for row in split_rows[name]:
                h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
                h.update(b"\n")
    return h.hexdigest()


def input_digest(config: DataConfig) -> str:
    """The content of every input file (directories file by file): what a prepared dataset is reused by."""
    from ..digest import paths_digest

    return paths_digest([*config.train, config.eval])


def read_inputs(config: DataConfig) -> tuple[list[Path], Path | None, Any]:
    """(training files, eval file, the training records read and validated): how run reads its inputs,
    also used to count them before preparing (train.auto decides the validation share from the count).
    A synth output directory stands for its files (inputs.py); the manifest keeps the options as given."""
    from . import formats

    train_files, eval_file = expand_inputs(list(config.train), config.eval)
    read = formats.read_records(train_files, config.format, skip_invalid=config.skip_invalid,
                                fields=config.fields or None)
    return train_files, eval_file, read


def run(
    config: DataConfig,
    out_dir: str | Path,
    *,
    model: str | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Prepare the inputs named in `config` into `out_dir`; raises TunelabError/InputError on bad input."""
    from . import clean, dedup, feedback, formats, pii, split

    stage = on_stage or (lambda _name: None)
    out_dir = Path(out_dir)
    if not config.train:
        raise TunelabError("no input files: give at least one INPUT (or data.train in the config)")
    inputs = [*config.train, *([config.eval] if config.eval else [])]
    check_output_dir(out_dir, OUTPUT_KIND, inputs)  # before the work: a refused --out costs nothing
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = round(now - t0, 3)
        t0 = now

    stage("reading and validating")
    inputs_read = input_digest(config)  # before reading: an input edited meanwhile is prepared again next time
    train_files, eval_file, read = read_inputs(config)
    # an auto validation share: chosen from the record count (auto_split.py; training resolves it itself
    # before calling here, knowing whether the run needs a validation split)
    config, auto_choices = resolve_split(config, len(read.records), needs=False)
    eval_read = None
    if eval_file is not None:
        eval_read = formats.read_records([eval_file], config.format, skip_invalid=config.skip_invalid,
                                         fields=config.fields or None)
    tick("read")

    removed: dict[str, int] = {}

    def count(reason: str, n: int) -> None:
        if n:
            removed[reason] = removed.get(reason, 0) + n

    # feedback that gives no preference pair (a rating alone) was never a row: it is counted here
    for path in train_files:
        if feedback.is_feedback_db(path):
            for reason, n in feedback.preference_rows(path)[1].items():
                count(reason, n)

    opts = clean.CleanOptions(
        normalize=config.clean.normalize,
        strip_html=config.clean.strip_html,
        min_chars=config.clean.min_chars,
        max_chars=config.clean.max_chars,
    )
    pools: dict[str, list[Record]] = {"input": read.records}
    if eval_read is not None:
        pools["eval"] = eval_read.records

    stage("cleaning")
    for name in list(pools):
        pools[name], dropped = clean.clean_records(pools[name], opts)
        for reason, n in dropped.items():
            count(reason, n)
    tick("clean")

    pii_counts: dict[str, int] = {}
    if config.pii == "mask":
        stage("scrubbing PII")
        for name in list(pools):
            pools[name], counts = pii.scrub_records(pools[name])
            for kind, n in counts.items():
                if n:
                    pii_counts[kind] = pii_counts.get(kind, 0) + n
    tick("pii")

    if config.dedup != "none":
        stage("removing exact duplicates")
        for name in list(pools):
            pools[name], n = dedup.exact_dedup(pools[name])
            count("exact_duplicate", n)
    tick("exact_dedup")

    stage("splitting")
    splits = split.split_records(
        pools["input"],
        config.split.ratios(),
        config.seed,
        stratify=config.split.stratify,
        group_by=config.split.group_by,
    )
    if "eval" in pools:
        splits["eval"] = pools["eval"]
    tick("split")

    if config.dedup == "near":
        stage("removing near duplicates")
        for name in list(splits):
            splits[name], n = dedup.near_dedup(splits[name], threshold=config.near_threshold, seed=config.seed)
            count("near_duplicate", n)
    tick("near_dedup")

    leaks: list[dict] = []
    if config.dedup != "none":
        stage("checking eval splits for leaks from train")
        for name in list(splits):
            if name == "train" or not splits[name]:
                continue
            splits[name], report = dedup.remove_leaks(
                splits["train"], splits[name], threshold=config.near_threshold, seed=config.seed
            )
            for row in report:
                row["split"] = name
            leaks += report
            count(f"leak_{name}", len(report))
    tick("leaks")

    if not splits.get("train"):
        raise TunelabError(
            f"no training records left after cleaning and deduplication (removed: {removed or 'none'}); "
            "nothing was written"
        )

    token_stats = None
    if model is not None:
        stage(f"rendering for {model}")
        token_stats = _token_stats(splits, model, config.max_length)
    tick("render")

    split_rows = {name: _record_lines(recs) for name, recs in splits.items()}
    manifest = {
        "tunelab_dataset": 1,
        "dataset_hash": dataset_hash(split_rows),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [str(p) for p in train_files] + ([str(eval_file)] if eval_file else []),
        "input_digest": inputs_read,
        "formats": {**read.formats, **(eval_read.formats if eval_read else {})},
        "rows_in": read.rows_in + (eval_read.rows_in if eval_read else 0),
        "records_valid": len(read.records) + (len(eval_read.records) if eval_read else 0),
        "skipped_invalid": _merge_counts(read.skipped, eval_read.skipped if eval_read else {}),
        "removed": removed,
        "pii": pii_counts,
        "splits": {name: len(recs) for name, recs in splits.items()},
        "kinds": _kinds(splits),
        "tokens": token_stats,
        "timings_s": timings,
        "options": json.loads(config.model_dump_json()),
    }
    if auto_choices:
        manifest["auto"] = auto_choices

    stage("writing")
    files: list[Path] = []
    with atomic_dir(out_dir, kind=OUTPUT_KIND, inputs=inputs) as tmp:
        for name, rows in split_rows.items():
            write_jsonl(tmp / f"{name}.jsonl", rows)
            files.append(out_dir / f"{name}.jsonl")
        if leaks:
            write_jsonl(tmp / "leaks.jsonl", leaks)
            files.append(out_dir / "leaks.jsonl")
        write_json(tmp / MANIFEST, manifest)
        files.append(out_dir / MANIFEST)
    return PrepareResult(out_dir=out_dir, splits=manifest["splits"], manifest=manifest, files=files)


def _merge_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def _kinds(splits: dict[str, list[Record]]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for recs in splits.values():
        for r in recs:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
    return kinds


def _token_stats(splits: dict[str, list[Record]], model: str, max_length: int) -> dict[str, Any]:
    """Render every record with the model's template: lengths, truncation and loss-token counts per split."""
    from ..models import load_tokenizer
    from .render import render_records

    tokenizer = load_tokenizer(model)
    stats: dict[str, Any] = {"model": model, "max_length": max_length}
    for name, recs in splits.items():
        if recs and all(r.kind != "preference" for r in recs):
            _, split_stats = render_records(recs, tokenizer, max_length)
            stats[name] = split_stats
    return stats


def load_split(dataset_dir: str | Path, split: str = "train") -> list[Record]:
    """Read one split of a prepared dataset directory back into Records."""
    path = Path(dataset_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise TunelabError(f"{path} not found: is {dataset_dir} a directory written by `tunelab data prepare`?")
    from ..io import read_jsonl

    return [Record.from_dict(row) for row in read_jsonl(path)]


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise TunelabError(f"{path} not found: is {dataset_dir} a directory written by `tunelab data prepare`?")
    return json.loads(path.read_text(encoding="utf-8"))
