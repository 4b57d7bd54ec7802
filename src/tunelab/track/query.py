"""Reading the tracking store back: the runs of an experiment, and everything about one run.

`list_runs` and `show_run` return plain dicts (what `tunelab runs list/show --json` prints). Reading
never creates a store: a missing SQLite file is an error that says so.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from . import lineage
from .tracker import Store, default_store, safe_uri, ui_command

# Metrics worth a column in the runs table, in this order; the rest only when there is room.
KEY_METRICS = ("val_loss", "train_loss", "val_ppl", "rougeL", "bleu", "token_f1", "chrf", "exact_match",
               "accuracy", "f1", "acc", "acc_norm", "mc1", "mc2", "perplexity")
_NOISE = frozenset({"lr", "epoch", "tokens", "grad_norm", "val_loss_tokens", "eval_seconds", "tokens_per_s"})
_RUN_ID = re.compile(r"^[0-9a-f]{1,32}$")


def resolve_store(config: str | Path | None = None, uri: str | None = None,
                  experiment: str | None = None) -> tuple[str, str | None]:
    """(tracking URI, experiment name or None for all) from a config file, an explicit URI, or the
    default store ./runs/mlflow.db of the current directory."""
    if config is not None and uri is not None:
        raise TunelabError("give either a CONFIG file or --uri, not both")
    if config is not None:
        from ..config import load_config

        cfg = load_config(config)
        store = cfg.tracking.uri or default_store(cfg.workdir)[0]
        return store, experiment or cfg.tracking.experiment or cfg.name
    if uri is not None:
        return uri, experiment
    return default_store(Path("runs"))[0], experiment


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _duration(info) -> float | None:
    if info.start_time and info.end_time:
        return round((info.end_time - info.start_time) / 1000, 3)
    return None


def key_metrics(metrics: dict[str, float], limit: int = 4) -> dict[str, float]:
    """The few metrics that say how a run went (losses, then eval scores, then the rest)."""
    names = [m for m in KEY_METRICS if m in metrics]
    names += sorted(m for m in metrics if m not in names and m not in _NOISE)
    return {m: metrics[m] for m in names[:limit]}


def _summary(run, experiments: dict[str, str]) -> dict[str, Any]:
    info, tags = run.info, run.data.tags
    return {
        "id": info.run_id,
        "experiment": experiments.get(info.experiment_id, info.experiment_id),
        "stage": tags.get(lineage.STAGE),
        "name": info.run_name,
        "status": info.status,
        "start_time": _iso(info.start_time),
        "end_time": _iso(info.end_time),
        "duration_s": _duration(info),
        "parent": tags.get(lineage.MLFLOW_PARENT),
        "key_metrics": key_metrics(run.data.metrics),
        "metrics": dict(sorted(run.data.metrics.items())),
    }


def _experiments(store: Store, experiment: str | None) -> list:
    client = store.client
    with store.guard("listing experiments"):
        if experiment is None:
            return list(client.search_experiments())
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage == "deleted":
            names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
            raise TunelabError(f"no experiment '{experiment}' in {safe_uri(store.uri)} (experiments: {names})")
        return [found]


def list_runs(uri: str, experiment: str | None = None, stage: str | None = None, limit: int = 50) -> dict[str, Any]:
    """The newest `limit` runs of an experiment (all experiments when None), optionally of one stage."""
    if stage is not None and not re.fullmatch(r"[\w\-]+", stage):
        raise TunelabError(f"--stage must be a stage name like train or eval, got {stage!r}")
    store = Store(uri, create=False)
    experiments = _experiments(store, experiment)
    names = {e.experiment_id: e.name for e in experiments}
    runs = []
    if experiments:
        with store.guard("searching runs"):
            runs = store.client.search_runs(
                list(names), filter_string=f"tags.`{lineage.STAGE}` = '{stage}'" if stage else "",
                max_results=limit, order_by=["attributes.start_time DESC"],
            )
    return {
        "uri": safe_uri(uri),
        "experiments": sorted(names.values()),
        "runs": [_summary(r, names) for r in runs],
        "ui_command": ui_command(uri),
    }


def _find_run(store: Store, run_id: str):
    """A run by its id or a unique prefix of it (the runs table shows the first 8 characters)."""
    run_id = run_id.strip().lower()
    if not _RUN_ID.match(run_id):
        raise TunelabError(f"'{run_id}' is not a run id (32 hex digits, or a unique prefix of one)")
    client = store.client
    if len(run_id) == 32:
        with store.guard(f"reading run {run_id}"):
            found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                       filter_string=f"attributes.run_id = '{run_id}'", max_results=1)
        if found:
            return found[0]
        raise TunelabError(f"no run {run_id} in {safe_uri(store.uri)}")
    with store.guard("searching runs"):
        ids = [e.experiment_id for e in client.search_experiments()]
        matches = [r for r in client.search_runs(ids, max_results=50000) if r.info.run_id.startswith(run_id)]
    if not matches:
        raise TunelabError(f"no run with an id starting {run_id} in {safe_uri(store.uri)}")
    if len(matches) > 1:
        listed = ", ".join(r.info.run_id for r in matches[:5])
        raise TunelabError(f"run id prefix {run_id} is ambiguous ({len(matches)} runs: {listed}); give more of it")
    return matches[0]


def _artifacts(store: Store, run_id: str, path: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in store.client.list_artifacts(run_id, path):
        if item.is_dir:
            out += _artifacts(store, run_id, item.path)
        else:
            out.append({"path": item.path, "size": item.file_size})
    return out


def _metric_summary(history: list) -> dict[str, Any]:
    points = sorted(history, key=lambda m: (m.step, m.timestamp))
    last = points[-1]
    summary: dict[str, Any] = {"last": last.value, "step": last.step, "points": len(points)}
    if len(points) > 1:
        values = [m.value for m in points]
        summary.update(first=points[0].value, min=min(values), max=max(values),
                       steps=[points[0].step, last.step])
    return summary


def show_run(uri: str, run_id: str) -> dict[str, Any]:
    """Everything about one run: params, tags, metrics (step metrics summarised), artifacts, lineage."""
    store = Store(uri, create=False)
    run = _find_run(store, run_id)
    info, data = run.info, run.data
    client = store.client
    with store.guard(f"reading run {info.run_id}"):
        experiment = client.get_experiment(info.experiment_id).name
        metrics = {k: _metric_summary(client.get_metric_history(info.run_id, k)) for k in sorted(data.metrics)}
        artifacts = _artifacts(store, info.run_id)
        children = client.search_runs([info.experiment_id],
                                       filter_string=f"tags.`{lineage.MLFLOW_PARENT}` = '{info.run_id}'")
    return {
        **_summary(run, {info.experiment_id: experiment}),
        "metrics": metrics,
        "params": dict(sorted(data.params.items())),
        "tags": dict(sorted(data.tags.items())),
        "upstream": lineage.upstream_of(data.tags),
        "children": [{"id": c.info.run_id, "stage": c.data.tags.get(lineage.STAGE), "name": c.info.run_name,
                      "status": c.info.status} for c in children],
        "artifact_uri": info.artifact_uri,
        "artifacts": artifacts,
        "uri": safe_uri(uri),
        "ui_command": ui_command(uri),
    }
