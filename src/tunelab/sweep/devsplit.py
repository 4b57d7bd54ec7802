"""The data every trial of a sweep shares: the training records and the development split it is scored on.

The development split comes from the training data (`sweep.dev_share` of its records, drawn with
data.seed by tunelab.data's splitter, so a later `tunelab train` with the same validation share holds out
the same records) or from a `sweep.dev` file. It is never the evaluation set (data.eval / eval.data):
selecting settings on the questions the comparison reports would make the comparison dishonest. Both
are prepared once into <run_dir>/sweep/data by tunelab.data's prepare (cleaned, PII-masked, deduplicated;
a dev file's records that repeat a training record are removed as leaks), then rendered once.

The held-out evaluation questions are leak-checked against the development split as prepare checks them
against training: a development record that (nearly) repeats an evaluation question is dropped from the
development split, so no trial is ever scored on one. The evaluation file is read for that check only.
What was held out, its hash and what was dropped is written to <run_dir>/sweep/dev.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig, ExperimentConfig, SplitConfig
from ..errors import TunelabError
from ..io import file_lock, write_json
from ..train.setup import TrainData


@dataclass
class DevSplit:
    """The rendered data of every trial (train = the trials' training split, val = the development split)
    and the record of how the split was made (written to dev.json)."""

    data: TrainData
    record: dict[str, Any]

    @property
    def dev_records(self) -> list:
        return self.data.val_records


def locked(path: Path):
    """An exclusive lock on `path` (created if missing): two sweep processes sharing one run directory
    prepare the shared data one after the other; the second then reuses what the first prepared."""
    return file_lock(path)


def sweep_data_config(config: ExperimentConfig) -> DataConfig:
    """config.data as the sweep prepares it: the evaluation file left out; the development split is the
    validation split (dev_share of the training records) or, with sweep.dev, the dev file in eval's place
    (prepare then removes its records that repeat training records, as it does for an eval file)."""
    sweep = config.sweep
    assert sweep is not None
    split = config.data.split
    if sweep.dev is not None:
        ratios = SplitConfig(train=1.0, validation=0.0, test=0.0, stratify=split.stratify, group_by=split.group_by)
        return config.data.model_copy(update={"split": ratios, "eval": sweep.dev})
    ratios = SplitConfig(train=round(1 - sweep.dev_share, 10), validation=sweep.dev_share, test=0.0,
                         stratify=split.stratify, group_by=split.group_by)
    return config.data.model_copy(update={"split": ratios, "eval": None})


def _heldout_records(config: ExperimentConfig, out_dir: Path) -> tuple[list, Path | None]:
    """The evaluation set's records, prepared with the same cleaning and PII masking as the training data
    (so the leak check compares like with like); ([], None) without one."""
    from ..data.prepare import load_split
    from ..train.setup import prepare_data

    path = config.eval.data or config.data.eval
    if path is None:
        return [], None
    heldout = config.data.model_copy(update={
        "train": [path], "eval": None, "split": SplitConfig(train=1.0, validation=0.0, test=0.0, stratify=False)})
    prepare_data(heldout, out_dir)
    return load_split(out_dir, "train"), path


def _digest(records: list) -> str:
    h = hashlib.sha256()
    for rec in records:
        h.update(json.dumps(rec.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def record_id(record: Any) -> str:
    """A short content hash naming one record in dev.json (records carry no ids of their own)."""
    return hashlib.sha256(json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def build(config: ExperimentConfig, tokenizer: Any, out_dir: Path) -> DevSplit:
    """Prepare (or reuse) and render the trials' data under out_dir (<run_dir>/sweep); see the module
    docstring. Raises TunelabError when no development record is left."""
    from ..data.dedup import remove_leaks
    from ..data.prepare import load_split
    from ..train.objectives import get_objective
    from ..train.setup import prepare_data

    sweep = config.sweep
    assert sweep is not None
    data_config = sweep_data_config(config)
    with locked(out_dir / ".prepare.lock"):
        manifest = prepare_data(data_config, out_dir / "data")
        heldout, heldout_path = _heldout_records(config, out_dir / "heldout")
    train_records = load_split(out_dir / "data", "train")
    dev_name = "eval" if sweep.dev is not None else "validation"
    dev_file = out_dir / "data" / f"{dev_name}.jsonl"
    dev_records = load_split(out_dir / "data", dev_name) if dev_file.is_file() else []
    dev_records, leaks = remove_leaks(heldout, dev_records, threshold=config.data.near_threshold,
                                      seed=config.data.seed)
    if not dev_records:
        where = f"sweep.dev ({sweep.dev})" if sweep.dev else f"sweep.dev_share {sweep.dev_share} of the training data"
        raise TunelabError(f"the development split is empty ({where}, after removing duplicates and evaluation "
                           "questions); give more records, a larger sweep.dev_share, or a sweep.dev file")
    objective = get_objective(config.train.objective)
    max_length = config.data.max_length
    train, train_stats = objective.build(train_records, tokenizer, max_length)
    val, val_stats = objective.build(dev_records, tokenizer, max_length)
    if not train or not val:
        raise TunelabError("no training or development example has a token in the loss after rendering; check "
                           "data.max_length and that chat records end with an assistant reply")
    record = {
        "source": f"sweep.dev {sweep.dev}" if sweep.dev else f"sweep.dev_share {sweep.dev_share} of data.train "
                  f"(data.seed {config.data.seed})",
        "dataset_hash": manifest["dataset_hash"],
        "train_records": len(train_records),
        "dev_records": len(dev_records),
        "dev_sha256": _digest(dev_records),
        "dev_ids": [record_id(r) for r in dev_records],
        "heldout": str(heldout_path) if heldout_path else None,
        "heldout_records": len(heldout),
        "dev_removed_as_heldout_leaks": leaks,
    }
    write_json(out_dir / "dev.json", record)
    data = TrainData(train, val, train_stats, val_stats, manifest, manifest["dataset_hash"], dev_records)
    return DevSplit(data, record)
