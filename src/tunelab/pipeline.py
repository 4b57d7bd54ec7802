"""The main job, `tunelab run CONFIG`: prepare -> train each model -> evaluate the matrix -> compare -> report.

Every step is skipped when its inputs have not changed, so a second run costs only the checks:
- prepare: reused while the data options and the input files' content are unchanged (train.run.prepare_dataset);
- tune (compare.tune): before a model's tuned variant is trained, tunelab.sweep searches the sweep:
  section's space for it in `<run_dir>/tune/<model>/sweep`, scored on a development split of the training
  data (never the eval set), and the tuned variant trains with the best settings; the study is named by
  everything its trials depend on, so a rerun with the same settings finds it finished and searches no more;
- train: one run directory per model, `<run_dir>/train/<model>`; skipped when it holds a finished run
  whose key matches (train_key: the training config, the dataset hash, the content of every input file
  and of the base model, the chat template's text, device kind, dtype and precision); resumed from its last
  checkpoint when an interrupted run with the same key is there; a run made with another key is moved
  aside to `<model>.replaced-<time>` (never deleted) and training starts over;
- eval: each variant's predictions are cached under a key of everything they depend on (compare.evaluate);
- compare and report: always rewritten (cheap), and with them each tuned run's model card (README.md,
  tunelab.export.card), which then carries the comparison table.

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
TUNE_BUDGET_ATTR = "tunelab.tune_budget"  # a study attribute: the compare.tune budget it has spent
DONE = ("completed", "early_stopped")


class Interrupted(TunelabError):
    exit_code = 130


@dataclass
class PipelineResult:
    run_dir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    compare: Any = None
    seconds: float = 0.0
    tune: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> how compare.tune chose its settings

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "seconds": round(self.seconds, 1), "steps": self.steps,
                "tune": self.tune, "compare": self.compare.to_dict() if self.compare is not None else None}


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
    from .train.rewards import reward_code_digest

    reward_code = reward_code_digest([*config.train.rewards, *(r for s in config.stages for r in s.train.rewards)])
    if reward_code is not None:  # the user's reward functions decide what grpo learns
        key["reward_code"] = reward_code
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
               stage: Callable[[str], None], tune: dict[str, Any] | None = None,
               rag_aware: bool = False) -> dict[str, Any]:
    """Train (or reuse) one model's tuned variant; with `tune` (compare.tune's record) its best settings are
    applied first, so they are part of the reuse key like any other training setting. `rag_aware`: its
    RAG-aware variant instead, trained on examples with retrieved passages (compare.ragaware), whose
    rendered records' content is its dataset hash."""
    from .compare.reading import settings_text
    from .compare.run import TUNE_FILE
    from .compare.variants import training_config
    from .train.run import OUTPUT_KIND

    tcfg = training_config(config, model, rag_aware=rag_aware)
    if tune is not None:
        from .sweep.space import apply

        tcfg = apply(tcfg, tune["best_params"])
    prepared = None
    if rag_aware:
        from .compare.ragaware import rag_aware_data
        from .rag import index_dir_for

        stage(f"rag-aware: retrieving passages for the training examples of {model}")
        prepared = rag_aware_data(tcfg, Path(config.run_dir) / "data", index_dir_for(config))
        tcfg, dataset_hash = prepared.config, prepared.data.dataset_hash
    what = f"train{' rag-aware' if rag_aware else ''} {model}"
    run_dir = Path(tcfg.run_dir)
    key = train_key(tcfg, dataset_hash)
    status = _train_status(run_dir, key)
    if status == "done":
        if tune is not None:  # the same settings; the record may name more trials of the same study
            write_json(run_dir / TUNE_FILE, tune)
        return {"step": what, "status": "cached", "run_dir": str(run_dir)}
    claim_output_dir(run_dir, OUTPUT_KIND)
    write_json(run_dir / KEY_FILE, {"key": key})  # first: an interrupted run is recognised as ours
    if prepared is not None:
        from .compare.ragaware import write_rag_context

        write_rag_context(run_dir, prepared)
    tags: dict[str, Any] = {}
    params: dict[str, Any] = {}
    if tune is not None:
        write_json(run_dir / TUNE_FILE, tune)
        tags = {"tunelab.tune.study": tune["study"], "tunelab.tune.metric": tune["metric"],
                "tunelab.tune.best_value": tune["best_value"], "tunelab.tune.trials": tune["trials"]}
        params = {f"tuned.{k}": v for k, v in tune["best_params"].items()}  # the run's config params are the
        # experiment's (untuned) values, so the chosen ones go under their own names
    stage(f"train: {config.method.name} {config.train.objective}{' (RAG-aware)' if rag_aware else ''} on {model}"
          + (f" with the searched settings {settings_text(tune['best_params'])}" if tune is not None else "")
          + (" (resuming from the last checkpoint)" if status == "resume" else ""))
    summary = tracked_train(tracker, tcfg, resume=status == "resume", progress=progress, tags=tags,
                            params=params, data=prepared.data if prepared is not None else None).summary
    return {"step": what, "status": "resumed" if status == "resume" else "ran",
            "run_dir": str(run_dir), "seconds": summary.get("wall_seconds"),
            "final_val_loss": summary.get("final_val_loss"), "tokens_per_s": summary.get("tokens_per_s")}


def tracked_train(tracker: Any, config: ExperimentConfig, *, resume: bool = False, progress: bool = True,
                  callback: Callable[[dict[str, Any]], None] | None = None, tags: dict[str, Any] | None = None,
                  params: dict[str, Any] | None = None, data: Any = None):
    """train.run as one MLflow train run: step metrics, final losses and speed, the run directory's files
    as artifacts (`tags` and `params` added to the run's own; `data`: rendered data, see train.run). An
    interrupted run is recorded as KILLED and raises Interrupted (checkpoint saved)."""
    from .track import step_callback
    from .train import run as train_run

    tags = {"base_model": config.model.name, "method": config.method.name, "objective": config.train.objective,
            **(tags or {})}
    with tracker.run("train", name=f"train {config.model.name}", tags=tags, params=params) as tr:
        logger = step_callback(tr)

        def both(event: dict[str, Any]) -> None:
            logger(event)
            if callback is not None:
                callback(event)

        result = train_run(config, resume=resume, callback=both, progress=progress, data=data)
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
        from .export.card import write_run_card

        write_run_card(Path(result.run_dir))  # tunelab's model card as README.md (a user's README is kept)
        for path in sorted(Path(result.run_dir).iterdir()):
            if path.is_file() and path.name != KEY_FILE and not path.name.startswith("."):  # not the marker
                tr.log_artifact(path, artifact_path="model")
    return result


def _load_study(storage: str, name: str) -> Any:
    """The study `name` in `storage`, or None when there is none yet. A default SQLite file that does not
    exist is not created here: its folder is claimed by the sweep that creates it."""
    import optuna

    from .sweep.study import open_storage

    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        return None
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:  # optuna: no study of that name
        return None


def _tune_record(study: Any, sweep: Any, out_dir: Path, budget: dict[str, Any]) -> dict[str, Any]:
    """What the report says about a search: study, budget, trials, objective, best value and settings,
    and the development split it was scored on."""
    from optuna.trial import TrialState

    from .sweep import objective_direction
    from .sweep.space import decode_params

    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete, pruned = states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED)
    try:
        best = study.best_trial
    except ValueError:  # optuna: no trial has completed
        raise TunelabError(f"compare.tune: no trial of study '{study.study_name}' completed ({pruned} pruned, "
                           f"{len(states) - complete - pruned} failed); raise compare.tune.trials or timeout_s, "
                           f"or see {out_dir / 'report.html'}") from None
    try:
        dev = json.loads((out_dir / "dev.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # a study searched on another machine, sharing its storage
        dev = {}
    metric, direction = objective_direction(sweep)
    return {"study": study.study_name, "metric": metric, "direction": direction, "budget": budget,
            "trials": complete + pruned, "complete": complete, "pruned": pruned, "best_trial": best.number,
            "best_value": best.value,
            "best_params": decode_params(sweep.space, best.params),
            "dev": {k: dev.get(k) for k in ("source", "train_records", "dev_records", "dev_sha256", "heldout",
                                            "heldout_records")},
            "report": str(out_dir / "report.html"), "best_config": str(out_dir / "best.yaml")}


def _tune_one(config: ExperimentConfig, model: str, dataset_hash: str, tracker: Any, progress: bool,
              stage: Callable[[str], None]) -> dict[str, Any]:
    """compare.tune for one model: search the sweep space for it (tunelab.sweep, in
    `<run_dir>/tune/<model>/sweep`), or find that search already done, and return the `tune <model>` step
    with its record under "tune" (see _tune_record)."""
    from optuna.trial import TrialState

    from .compare.reading import settings_text
    from .compare.variants import slug, stable_hash, training_config
    from .config import SweepConfig
    from .digest import paths_digest
    from .secrets import redact_text
    from .sweep import run as sweep_run
    from .sweep.study import default_storage

    tune = config.compare.tune
    assert tune is not None
    sweep = (config.sweep or SweepConfig()).model_copy(deep=True)
    sweep.trials, sweep.timeout_s = tune.trials, tune.timeout_s
    searched = config.model_copy(deep=True)
    searched.model.name, searched.name, searched.workdir = model, slug(model), Path(config.run_dir) / "tune"
    searched.compare.tune = None  # its best.yaml is a plain experiment with the best settings
    searched.sweep = sweep
    # the study is named by everything its trials depend on: a changed setting, data file or base model
    # starts a new study (the old one stays in the storage), an unchanged one is found and reused
    depends = {"train": train_key(training_config(config, model), dataset_hash),
               "sweep": sweep.model_dump(mode="json", exclude={"trials", "timeout_s", "storage", "study"}),
               "eval": [paths_digest([config.eval.data]), config.eval.max_new_tokens, config.eval.batch_size]}
    name = f"{sweep.study or config.name}.{slug(model)}.{stable_hash(depends)[:8]}"
    storage = sweep.storage or default_storage(searched)
    budget = {"trials": tune.trials, "timeout_s": tune.timeout_s}
    out_dir = Path(searched.run_dir) / "sweep"

    study = _load_study(storage, name)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = 0 if study is None else len(study.get_trials(deepcopy=False, states=finished))
    spent = study is not None and (study.user_attrs.get(TUNE_BUDGET_ATTR) == budget
                                   or (tune.trials is not None and done >= tune.trials))
    status = "cached"
    if not spent:
        todo = None if tune.trials is None else tune.trials - done
        stage(f"tune: searching {model}: {todo or 'up to ' + str(tune.timeout_s) + ' s of'} trials "
              f"({'continuing study ' + name if done else 'study ' + name})")

        def report(row: dict[str, Any]) -> None:
            value = "" if row["value"] is None else f" {row['value']:.4g}"
            stage(f"tune: trial {row['number']} {row['state']}{value} ({settings_text(row['params'])})")

        sweep_run(searched, trials=todo, timeout=tune.timeout_s, storage=storage, study_name=name, resume=True,
                  tracker=tracker, progress=progress, on_trial=report)
        study = _load_study(storage, name)
        assert study is not None
        study.set_user_attr(TUNE_BUDGET_ATTR, budget)  # spent: a rerun with this budget searches no more
        status = "resumed" if done else "ran"
    record = _tune_record(study, sweep, out_dir, budget) | {"storage": redact_text(storage)}
    return {"step": f"tune {model}", "status": status, "study": name, "report": record["report"], "tune": record}


def check_benchmark_paths(config: ExperimentConfig) -> None:
    """eval.benchmark_paths names registered benchmarks (the config layer cannot see the registry)."""
    from .evaluate.benchmarks.registry import REGISTRY

    unknown = sorted(set(config.eval.benchmark_paths) - set(REGISTRY))
    if unknown:
        raise TunelabError(f"{config.name}: eval.benchmark_paths: unknown benchmark "
                           f"{', '.join(unknown)}; choose from {', '.join(REGISTRY)}")


def run(config: ExperimentConfig, *, on_stage: Callable[[str], None] | None = None, progress: bool = True,
        tracker: Any = None, train: bool = True,
        on_progress: Callable[[str, int, int], None] | None = None) -> PipelineResult:
    """Run the whole experiment in `config`; see the module docstring for what is reused.

    train=False is `tunelab compare`: the matrix is evaluated with the weights already trained.
    `progress` is training's own bar; `on_progress(task, done, total)` is called as each variant's answers
    are generated and as the forgetting check scores its benchmarks (after all training)."""
    from .compare import run as compare_run
    from .compare.variants import models_of, rag_aware_enabled
    from .track import Tracker
    from .train.run import OUTPUT_KIND, prepare_dataset

    check_benchmark_paths(config)  # before any work: a misspelt name is a config error, not a late failure
    if rag_aware_enabled(config) and config.rag.docs is None:  # before training, not after the plain model
        raise TunelabError(f"{config.name}: compare.rag_aware trains with passages retrieved from rag.docs, "
                           "which is not set: name the documents directory, or set compare.rag_aware: off")
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
            tune = None
            if config.compare.tune is not None:
                t = time.perf_counter()
                step = _tune_one(config, model, dataset_hash, tracker, progress, stage)
                step["seconds"] = round(time.perf_counter() - t, 1)
                result.steps.append(step)
                tune = result.tune[model] = step["tune"]
            t = time.perf_counter()
            step = _train_one(config, model, dataset_hash, tracker, progress, stage, tune=tune)
            step["seconds"] = round(time.perf_counter() - t, 1)
            result.steps.append(step)
            if rag_aware_enabled(config):
                t = time.perf_counter()
                step = _train_one(config, model, dataset_hash, tracker, progress, stage, tune=tune, rag_aware=True)
                step["seconds"] = round(time.perf_counter() - t, 1)
                result.steps.append(step)

    t = time.perf_counter()
    with tracker.run("compare", name="compare", tags={"dataset_hash": dataset_hash}) as tr:
        compared = compare_run.run(config, on_stage=stage, on_progress=on_progress)
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
    from .export.card import write_run_card

    for res in compared.results:  # each tuned run's card now carries the comparison table
        if res.variant.kind == "tuned" and not res.variant.rag and res.variant.weights is not None:
            write_run_card(res.variant.weights)
    result.steps.append({"step": "evaluate + compare", "status": "ran",
                         "evaluated": [r.variant.id for r in compared.results if not r.cached],
                         "cached": compared.cached, "seconds": round(time.perf_counter() - t, 1)})
    result.seconds = time.perf_counter() - started
    write_json(run_dir / "pipeline.json", result.to_dict() | {"compare": compared.files})
    return result
