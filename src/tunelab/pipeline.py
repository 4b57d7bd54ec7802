"""The main job, `tunelab run CONFIG`: prepare -> train each model -> evaluate the matrix -> compare -> report.

Every step is skipped when its inputs have not changed, so a second run costs only the checks:
- prepare: reused while the data options and the input files' content are unchanged (train.run.prepare_dataset);
- train: one run directory per model, `<run_dir>/train/<model>`; skipped when it holds a finished run
  whose key matches (train_key: the training config, the dataset hash, the content of every input file
  and of the base model, the chat template's text, device kind, dtype and precision); resumed from its last
  checkpoint when an interrupted run with the same key is there; a run made with another key is moved
  aside to `<model>.replaced-<time>` (never deleted) and training starts over;
- eval: each variant's predictions are cached under a key of everything they depend on (compare.evaluate);
- compare and report: always rewritten (cheap).

Each step is an MLflow run under the experiment (tunelab.track), with the dataset hash, base model and
method as tags. Ctrl-C during training saves a checkpoint; the next `tunelab run` resumes it.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, save_resolved
from .errors import TunelabError
from .io import check_output_dir, claim_output_dir, write_json

KEY_FILE = "pipeline-key.json"
DONE = ("completed", "early_stopped")


class Interrupted(TunelabError):
    exit_code = 130


@dataclass
class PipelineResult:
    run_dir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    compare: Any = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "seconds": round(self.seconds, 1), "steps": self.steps,
                "compare": self.compare.to_dict() if self.compare is not None else None}


def train_key(config: ExperimentConfig, dataset_hash: str) -> str:
    """Everything a trained model depends on, by content: the training config, the prepared dataset's
    hash, every input file named anywhere in it (stages and mixture tasks included), the base model's
    files, the chat template's text, the device kind, dtype and precision it trains with here, and, when
    the config leaves settings at auto, the code of the rules that choose them (train/auto.py)."""
    import torch

    from .compare.variants import model_identity, stable_hash
    from .digest import paths_digest
    from .models.loading import resolve_device
    from .train.auto import auto_fields, rules_digest
    from .train.run import precision_for

    sections = [s for s in ("model", "data", "method", "train", "stages", "mixture") if s in config.resolved()]
    identity = model_identity(config, config.model.name, config.model.device)
    with warnings.catch_warnings():  # only the name is wanted here, not precision_for's scaler notes
        warnings.simplefilter("ignore")
        precision = precision_for(config.train.precision, torch.device(resolve_device(config.model.device)))[0]
    key = {"config": config.fingerprint(*sections), "dataset": dataset_hash,
           "inputs": paths_digest(_input_paths(config)), **identity, "precision": precision}
    if auto_fields(config):
        # the values chosen for auto fields follow from the inputs above and the rules' code: a run trained
        # under other rules (another tunelab) is not this one
        key["auto_rules"] = rules_digest()
    return stable_hash(key)


def _input_paths(config: ExperimentConfig) -> list[Path | None]:
    datas = [config.data] + [stage.data for stage in config.stages]
    tasks = config.mixture + [task for stage in config.stages for task in stage.mixture]
    return [p for d in datas for p in [*d.train, d.eval]] + [p for t in tasks for p in t.data]


def _train_status(run_dir: Path, key: str) -> str:
    """'done' (finished with this key), 'resume' (interrupted with this key), 'fresh' (nothing usable)."""
    from .train.checkpoint import latest_checkpoint
    from .train.run import OUTPUT_KIND

    if not run_dir.exists():
        return "fresh"
    try:
        stored = json.loads((run_dir / KEY_FILE).read_text())["key"]
    except (OSError, ValueError, KeyError):
        stored = None
    if stored != key:
        if any(run_dir.iterdir()):
            check_output_dir(run_dir, OUTPUT_KIND)  # only a run of ours is moved aside, never a user's folder
            aside = run_dir.with_name(f"{run_dir.name}.replaced-{datetime.now():%Y%m%d-%H%M%S}")
            shutil.move(str(run_dir), aside)
        return "fresh"
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("status") in DONE:
        return "done"
    return "resume" if latest_checkpoint(run_dir) is not None else "fresh"


def _train_one(config: ExperimentConfig, model: str, dataset_hash: str, tracker: Any, progress: bool,
               stage: Callable[[str], None]) -> dict[str, Any]:
    from .compare.variants import training_config
    from .train.run import OUTPUT_KIND

    tcfg = training_config(config, model)
    run_dir = Path(tcfg.run_dir)
    key = train_key(tcfg, dataset_hash)
    status = _train_status(run_dir, key)
    if status == "done":
        return {"step": f"train {model}", "status": "cached", "run_dir": str(run_dir)}
    claim_output_dir(run_dir, OUTPUT_KIND)
    write_json(run_dir / KEY_FILE, {"key": key})  # first: an interrupted run is recognised as ours
    stage(f"train: {config.method.name} {config.train.objective} on {model}"
          + (" (resuming from the last checkpoint)" if status == "resume" else ""))
    summary = tracked_train(tracker, tcfg, resume=status == "resume", progress=progress).summary
    return {"step": f"train {model}", "status": "resumed" if status == "resume" else "ran",
            "run_dir": str(run_dir), "seconds": summary.get("wall_seconds"),
            "final_val_loss": summary.get("final_val_loss"), "tokens_per_s": summary.get("tokens_per_s")}


def tracked_train(tracker: Any, config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
                  callback: Callable[[dict[str, Any]], None] | None = None):
    """train.run as one MLflow train run: step metrics, final losses and speed, the run directory's files
    as artifacts. An interrupted run is recorded as KILLED and raises Interrupted (checkpoint saved)."""
    from .track import step_callback
    from .train import run as train_run

    tags = {"base_model": config.model.name, "method": config.method.name, "objective": config.train.objective}
    with tracker.run("train", name=f"train {config.model.name}", tags=tags) as tr:
        logger = step_callback(tr)

        def both(event: dict[str, Any]) -> None:
            logger(event)
            if callback is not None:
                callback(event)

        result = train_run(config, resume=resume, callback=both, progress=progress)
        if hasattr(logger, "flush"):
            logger.flush()
        summary = result.summary
        tr.set_tags({"dataset_hash": summary.get("dataset_hash")})
        # the config's params say "auto" for the settings tunelab chose; the chosen values sit beside them
        tr.log_params({f"auto.{name}": choice["value"] for name, choice in (summary.get("auto") or {}).items()})
        tr.log_metrics({k: summary.get(k) for k in ("final_train_loss", "final_val_loss", "final_val_perplexity",
                                                    "train_seconds", "tokens_per_s", "peak_rss_mb")})
        if result.status == "interrupted":
            tr.status = "KILLED"
            raise Interrupted(f"training was interrupted; a checkpoint is saved in {result.run_dir}: run the same "
                              "command again to resume it (tunelab train: add --resume)")
        for path in sorted(Path(result.run_dir).iterdir()):
            if path.is_file() and path.name != KEY_FILE and not path.name.startswith("."):  # not the marker
                tr.log_artifact(path, artifact_path="model")
    return result


def check_benchmark_paths(config: ExperimentConfig) -> None:
    """eval.benchmark_paths names registered benchmarks (the config layer cannot see the registry)."""
    from .evaluate.benchmarks.registry import REGISTRY

    unknown = sorted(set(config.eval.benchmark_paths) - set(REGISTRY))
    if unknown:
        raise TunelabError(f"{config.name}: eval.benchmark_paths: unknown benchmark "
                           f"{', '.join(unknown)}; choose from {', '.join(REGISTRY)}")


def run(config: ExperimentConfig, *, on_stage: Callable[[str], None] | None = None, progress: bool = True,
        tracker: Any = None, train: bool = True) -> PipelineResult:
    """Run the whole experiment in `config`; see the module docstring for what is reused.

    train=False is `tunelab compare`: the matrix is evaluated with the weights already trained."""
    from .compare import run as compare_run
    from .compare.variants import models_of
    from .track import Tracker
    from .train.run import OUTPUT_KIND, prepare_dataset

    check_benchmark_paths(config)  # before any work: a misspelt name is a config error, not a late failure
    stage = on_stage or (lambda _s: None)
    started = time.perf_counter()
    run_dir = claim_output_dir(config.run_dir, OUTPUT_KIND)  # the experiment dir: a run dir too
    save_resolved(config, run_dir)
    tracker = tracker or Tracker.from_config(config)
    result = PipelineResult(run_dir)

    t = time.perf_counter()
    stage("data: preparing the dataset")
    manifest_file = run_dir / "data" / "manifest.json"
    before = manifest_file.stat().st_mtime if manifest_file.is_file() else None
    manifest = prepare_dataset(config, run_dir / "data")
    reused = before is not None and manifest_file.stat().st_mtime == before
    dataset_hash = manifest["dataset_hash"]
    if not reused:
        with tracker.run("prepare", name="prepare", tags={"dataset_hash": dataset_hash}) as tr:
            metrics = {"rows_in": manifest.get("rows_in"), "records_valid": manifest.get("records_valid")}
            metrics |= {f"split_{k}": v for k, v in (manifest.get("splits") or {}).items()}
            metrics |= {f"removed_{k}": v for k, v in (manifest.get("removed") or {}).items()}
            tr.log_metrics(metrics)
            tr.log_artifact(manifest_file, artifact_path="data")
    result.steps.append({"step": "prepare", "status": "cached" if reused else "ran", "dataset_hash": dataset_hash,
                         "seconds": round(time.perf_counter() - t, 1)})

    if train and config.compare.train:
        for model in models_of(config):
            t = time.perf_counter()
            step = _train_one(config, model, dataset_hash, tracker, progress, stage)
            step["seconds"] = round(time.perf_counter() - t, 1)
            result.steps.append(step)

    t = time.perf_counter()
    with tracker.run("compare", name="compare", tags={"dataset_hash": dataset_hash}) as tr:
        compared = compare_run.run(config, on_stage=stage)
        comparison = compared.comparison
        for row in comparison.rows:
            for name, cell in row["metrics"].items():
                if cell.get("value") is not None:
                    tr.log_metrics({f"{row['id']}.{name}": cell["value"]})
        tr.log_artifacts(compared.out_dir, artifact_path="compare")
        compare_id = getattr(tr, "id", None)
    for res in compared.results:  # each freshly evaluated variant, nested under the compare run
        if not res.cached:
            compare_run.track_variant(tracker, config, res, dataset_hash, parent=compare_id)
    result.compare = compared
    result.steps.append({"step": "evaluate + compare", "status": "ran",
                         "evaluated": [r.variant.id for r in compared.results if not r.cached],
                         "cached": compared.cached, "seconds": round(time.perf_counter() - t, 1)})
    result.seconds = time.perf_counter() - started
    write_json(run_dir / "pipeline.json", result.to_dict() | {"compare": compared.files})
    return result
