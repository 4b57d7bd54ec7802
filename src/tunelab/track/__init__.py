"""Tracking: every prepare, synth, train, eval and compare is an MLflow run, with lineage and no secrets.

The default store is a SQLite file in the workdir (`<workdir>/mlflow.db`, artifacts in
`<workdir>/mlartifacts`); `tracking.uri` points at any MLflow store instead (a server, another
database), `tracking.experiment` names the experiment (default: the config's name), and
`tracking.enabled: false` turns it off: the same API then does nothing and never imports MLflow.

    from tunelab.track import Tracker, lineage_tags, step_callback

    tracker = Tracker.from_config(config)
    with tracker.run("pipeline") as parent:                      # optional: one parent for a whole pipeline
        with tracker.run("prepare", parent=parent.id) as run:
            manifest = prepare(config.data, out_dir).manifest
            run.set_tags(lineage_tags(dataset_hash=manifest["dataset_hash"]))
            run.log_metrics({"rows_in": manifest["rows_in"], "splits": manifest["splits"]})
        with tracker.run("train", parent=parent.id,
                         tags=lineage_tags(dataset_hash=manifest["dataset_hash"])) as train_run:
            result = train.run(config, callback=step_callback(train_run))   # step metrics, batched
            train_run.log_metrics({"final_val_loss": result.final_val_loss})
            train_run.log_artifacts(result.run_dir, artifact_path="adapter")  # text files redacted
            if result.status == "interrupted":
                train_run.status = "KILLED"
        with tracker.run("eval", parent=parent.id, tags=lineage_tags(upstream={"train": train_run.id})) as run:
            run.log_metrics({name: m["value"] for name, m in summary["metrics"].items()})
            run.log_artifact(out_dir / "predictions.jsonl")

Each run gets, without being asked: tags `tunelab.stage`, `tunelab.version`, `tunelab.git.commit` and
`tunelab.git.dirty` (when the working directory is a git repository), `tunelab.config_name`,
`tunelab.config_hash`, `tunelab.base_model`, `tunelab.method`; the resolved config as params (nested
keys dotted: `train.lr`) and as the artifact `config.resolved.yaml` (pass log_config=False to skip).
Tags given as `dataset_hash`, `base_model` or `method` are stored under their `tunelab.*` names (what
`lineage_tags` builds), overriding the config's base model and method for that run.
An exception inside the block ends the run FAILED (Ctrl-C: KILLED), with the error in the tag
`tunelab.error`, and propagates. A store that cannot be used raises TunelabError naming its URI.

Secrets never reach the store: params, tags, text artifacts and error messages go through the redactor
(tunelab.secrets, re-exported by track/redact.py: `redact(obj)` for nested data, `redact_text`,
`redact_file`), which tunelab.io's writers apply to every file too. `tunelab runs list|show` read the
store back (track/query.py).
"""

from .lineage import git_state, lineage_tags, upstream_of
from .redact import MASK, Redactor, is_secret_key, redact_file, redact_text, secrets_in
from .steps import StepLogger, step_callback
from .tracker import NullRun, Run, Tracker, default_store, flatten, ui_command

__all__ = [
    "MASK",
    "NullRun",
    "Redactor",
    "Run",
    "StepLogger",
    "Tracker",
    "default_store",
    "flatten",
    "git_state",
    "is_secret_key",
    "lineage_tags",
    "redact_file",
    "redact_text",
    "secrets_in",
    "step_callback",
    "ui_command",
    "upstream_of",
]
