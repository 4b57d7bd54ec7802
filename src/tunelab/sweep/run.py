"""`run(config)`: a hyperparameter search over the `sweep:` section, from config to best config and report.

Order: check the config (no stages or mixture; a known objective metric) -> claim <run_dir> and its
sweep/ directory -> open the study (study.py: a new study, or with resume the existing one) ->
prepare and render the shared data with its development split once (devsplit.py) -> run trials in this
process until `trials` of them have finished or `timeout` has passed (objective.py) -> write the best
trial's config, the report and a summary. Every trial is an MLflow child run of this process's "sweep"
run. What is written, under <workdir>/<name>/sweep/:

    optuna.db          the study (default storage), shared by every process working on it
    data/, heldout/    the prepared training + development data; the evaluation set prepared for the leak check
    dev.json           the development split: its source, size, sha256, record ids, what was removed
    trials/<study>/trial-NNNN/   each trial's run directory (adapter, summary.json, train_log.jsonl)
    best.yaml          the experiment config with the best trial's settings: `tunelab train best.yaml`
                       and `tunelab run best.yaml` take it unchanged
    report.html, objective.png, importance.png, sweep.json

Several processes (or machines, with a shared storage) may run this on one study at once: Optuna hands
each trial number out once, so none is repeated or lost, and every process reports the whole study.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import RUN_DIR_KIND, ExperimentConfig, SweepConfig
from ..errors import TunelabError
from ..io import claim_output_dir, write_json, write_text
from . import devsplit, space
from .objective import Objective, safe_name
from .report import write_report
from .study import default_storage, open_study

OUTPUT_KIND = "sweep"  # the marker kind of <run_dir>/sweep


@dataclass
class SweepResult:
    """What a sweep found. `trials` holds every trial of the study (all processes'), `ran` this process's."""

    study_name: str
    storage: str
    metric: str
    direction: str
    out_dir: Path
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config_path: Path | None
    report_path: Path
    trials: list[dict[str, Any]]
    ran: list[dict[str, Any]]
    dev: dict[str, Any]
    importances: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("out_dir", "best_config_path", "report_path"):
            out[key] = str(out[key]) if out[key] is not None else None
        out["dev"] = {k: v for k, v in self.dev.items() if k != "dev_ids"}  # the ids are in dev.json
        return out


def objective_direction(sweep: SweepConfig) -> tuple[str, str]:
    """(metric, direction): val_loss, or a generation metric of tunelab.evaluate.metrics; the direction as
    given, else from the metric (lower loss, higher-is-better metrics up)."""
    from ..evaluate.metrics import METRICS

    metric = sweep.objective.metric
    if metric == "val_loss":
        return metric, sweep.objective.direction or "minimize"
    record = METRICS.get(metric)
    if record is None or record.needs_model:
        usable = ", ".join(["val_loss", *(m for m, r in METRICS.items() if not r.needs_model)])
        raise TunelabError(f"sweep.objective.metric: '{metric}' is not an objective a sweep can score; choose "
                           f"from {usable}")
    return metric, sweep.objective.direction or ("maximize" if record.higher_is_better else "minimize")


def _check(config: ExperimentConfig) -> ExperimentConfig:
    if config.stages or config.mixture:
        raise TunelabError(f"{config.name}: tunelab sweep searches one training run; a config with stages or a "
                           "mixture cannot be swept yet")
    if not config.data.train:
        raise TunelabError(f"{config.name}: a sweep needs training data (data.train)")
    if config.sweep is None:  # no section: the documented default space and budget
        config = config.model_copy(deep=True)
        config.sweep = SweepConfig()
    return config


def _best(study: Any, sweep: SweepConfig) -> dict[str, Any] | None:
    try:
        best = study.best_trial
    except ValueError:  # no trial has completed
        return None
    return {"number": best.number, "value": best.value, "params": space.decode_params(sweep.space, best.params),
            "run_dir": best.user_attrs.get("run_dir")}


def run(config: ExperimentConfig, *, trials: int | None = None, timeout: float | None = None,
        storage: str | None = None, study_name: str | None = None, resume: bool = False, tracker: Any = None,
        progress: bool = True, on_trial: Callable[[dict[str, Any]], None] | None = None,
        enqueue: list[dict[str, Any]] | None = None) -> SweepResult:
    """Search the config's sweep space; see the module docstring.

    trials / timeout: this process's budget (default sweep.trials / sweep.timeout_s); with resume the
    study's trial numbers continue from where they stopped. storage / study_name override sweep.storage /
    sweep.study. resume: continue the study (created if missing); without it an existing study is an
    error. tracker: a tunelab.track Tracker (default: from the config). progress: training progress
    bars. on_trial: called with each finished trial of this process ({number, state, value, params,
    pruned_at_step}). enqueue: settings ({dotted path: value}) to try first, in order, before sampling.
    """
    import optuna

    from ..track import Tracker
    from ..train.setup import load_tokenizer_for

    started = time.perf_counter()
    config = _check(config)
    sweep = config.sweep
    assert sweep is not None
    metric, direction = objective_direction(sweep)
    n_trials = trials if trials is not None else sweep.trials
    timeout = timeout if timeout is not None else sweep.timeout_s
    if n_trials is None and timeout is None:
        raise TunelabError("a sweep needs a budget: sweep.trials or sweep.timeout_s (--trials / --timeout)")
    for values in enqueue or []:
        unknown = sorted(set(values) - set(sweep.space))
        if unknown:
            raise TunelabError(f"enqueued settings outside the sweep space: {', '.join(unknown)}")

    # processes starting together on one run directory claim it one at a time: a claim in progress (a
    # directory, its marker not yet written) would look like a stranger's folder to the other
    with devsplit.locked(Path(config.workdir) / f".{config.name}.sweep.lock"):
        claim_output_dir(config.run_dir, RUN_DIR_KIND)
        out_dir = claim_output_dir(Path(config.run_dir) / "sweep", OUTPUT_KIND)
    storage_url = storage or sweep.storage or default_storage(config)
    name = study_name or sweep.study or config.name
    study = open_study(sweep, storage=storage_url, name=name, direction=direction, resume=resume)
    stored_metric = study.user_attrs.get("metric")
    if stored_metric not in (None, metric):
        raise TunelabError(f"study '{name}' optimises {stored_metric}, this sweep {metric}: use another --study")
    study.set_user_attr("metric", metric)

    tokenizer = load_tokenizer_for(config)
    dev = devsplit.build(config, tokenizer, out_dir)
    tracker = tracker or Tracker.from_config(config)
    ran: list[dict[str, Any]] = []

    def finished(row: dict[str, Any]) -> None:
        ran.append(row)
        if on_trial is not None:
            on_trial(row)

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tunelab reports each trial itself (on_trial)
    tags = {"tunelab.sweep.study": name, "tunelab.sweep.storage": storage_url, "dataset_hash": dev.record["dataset_hash"]}
    with tracker.run("sweep", name=f"sweep {name}", tags=tags,
                     params={"sweep.metric": metric, "sweep.direction": direction}) as parent:
        parent.log_dict(dev.record, "dev.json")
        objective = Objective(config, dev, tokenizer, metric, tracker, getattr(parent, "id", None),
                              out_dir / "trials" / safe_name(name), progress=progress, on_trial=finished)
        for values in enqueue or []:
            study.enqueue_trial(space.encode_params(sweep.space, values))
        study.optimize(objective, n_trials=n_trials, timeout=timeout)

        best = _best(study, sweep)
        best_path = None
        if best is not None:
            best_config = space.apply(config, best["params"])
            best_path = write_text(out_dir / "best.yaml", best_config.to_yaml())
            best["config"] = str(best_path)
        reported = write_report(out_dir, study, metric=metric, maximize=direction == "maximize",
                                title=f"sweep {name}: {config.name}", best=best, dev=dev.record)
        rows = _trial_rows(study, sweep)
        result = SweepResult(
            study_name=name, storage=storage_url, metric=metric, direction=direction, out_dir=out_dir,
            best_value=best["value"] if best else None, best_params=best["params"] if best else {},
            best_trial=best["number"] if best else None, best_config_path=best_path,
            report_path=out_dir / "report.html", trials=rows, ran=ran, dev=dev.record,
            importances=reported["importances"], files=reported["files"],
            seconds=round(time.perf_counter() - started, 1))
        states = [r["state"] for r in rows]
        parent.log_metrics({"best_value": result.best_value, "trials": len(rows),
                            "trials_complete": states.count("complete"), "trials_pruned": states.count("pruned")})
        if best is not None:
            parent.set_tags({"tunelab.sweep.best_trial": best["number"]})
        write_json(out_dir / "sweep.json", result.to_dict())
        for path in [out_dir / "sweep.json", out_dir / "report.html", *(Path(f) for f in reported["files"].values()),
                     *([best_path] if best_path else [])]:
            if path.is_file():
                parent.log_artifact(path, artifact_path="sweep")
    return result


def _trial_rows(study: Any, sweep: SweepConfig) -> list[dict[str, Any]]:
    from .report import trial_rows

    rows = trial_rows(study)
    for row in rows:
        row["params"] = space.decode_params(sweep.space, row["params"])
    return json.loads(json.dumps(rows, default=str))
