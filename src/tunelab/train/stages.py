"""Sequential fine-tuning: a `stages:` list, each stage starting from the previous stage's result.

    data: {max_length: 512}
    train: {epochs: 2}
    stages:
      - name: docs                      # continued pre-training on the raw documents
        data: {train: docs.jsonl}       # {"text": ...} records
        train: {objective: causal}
      - name: qa                        # then instruction tuning on the Q&A
        data: {train: qa.jsonl}

A stage's data, method and train sections are the experiment's top-level ones with the stage's keys
merged over them (config.py); a stage may have its own `mixture`. Stage i trains in
`<run_dir>/stages/<i>-<name>/` (a whole run directory: data, checkpoints, log, summary, artifact) and
`stage.json` there records what it was made from.

How a stage starts from the previous one (decided before anything trains, so an impossible chain fails
at once):
- previous stage full fine-tuning: the new stage loads the previous stage's saved model as its base;
- same adapter method and shape (name, r, alpha, target modules, virtual tokens; dropout and lr may
  differ): the new stage *continues the same adapter* on the same base, with a fresh optimizer; this is
  the common LoRA -> LoRA case (causal on documents, then SFT);
- a different method after an adapter: the previous adapter is merged into its base
  (PEFT merge_and_unload, in fp32; a QLoRA adapter merges into the unquantized base) and saved as
  `stages/<i>-<name>/merged/`, the new stage's base. Prompt and prefix tuning cannot be merged, so a
  different method cannot follow them.

The final result is written to the run directory itself, loadable the usual way:
- an adapter when every stage continued one adapter on the experiment's base model:
  `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model.name), run_dir)` (and
  `tunelab eval --adapter run_dir` works as for a single-stage run);
- otherwise a whole model (the last adapter merged into its base, or the last full stage):
  `AutoModelForCausalLM.from_pretrained(run_dir)`.

`lineage.json` in the run directory lists every stage: its config fingerprint, dataset hash, what it
started from (base model, a previous stage's adapter or saved/merged model, with the sha256 of the
starting adapter weights, equal to the previous stage's final ones when an adapter is continued), its
status, steps and final losses. `summary.json` is the last stage's summary with totals over stages and
the list of stages; `train_log.jsonl` concatenates the stages' logs (each row tagged with its stage).

Resume (`--resume`): stages that completed with the same config, the same data and the same upstream
stages are skipped; the first unfinished stage resumes from its checkpoint (or starts). Every stage's
identity chains the previous one's, so a changed stage invalidates the ones after it, and a completed
stage whose config changed is refused, saying what differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, MethodConfig, StageConfig, save_resolved
from ..errors import TunelabError
from ..io import atomic_dir, read_jsonl, write_json, write_jsonl
from ..models.loading import merge_adapter
from .artifacts import save_artifacts
from .checkpoint import describe_differences, latest_checkpoint
from .distributed import Dist
from .methods import get_method
from .setup import load_tokenizer_for, preparer
from .single import TrainResult, train_one

DONE = ("completed", "early_stopped")
STAGES = "stages"
STAGE_FILE = "stage.json"
MERGED = "merged"


@dataclass
class StagePlan:
    index: int
    name: str
    stage: StageConfig
    start: str  # base | continue | full | merged

    @property
    def dirname(self) -> str:
        return f"{self.index}-{self.name}"


def same_adapter(a: MethodConfig, b: MethodConfig) -> bool:
    """Same method and shape (the method's shape keys, methods.py), so b can continue a's adapter."""
    return a.name == b.name and all(getattr(a, k) == getattr(b, k) for k in get_method(a.name).shape_keys)


def plan_stages(config: ExperimentConfig) -> tuple[list[StagePlan], str]:
    """Each stage's starting point and the final artifact kind ("adapter" or "full"); raises for a chain
    that cannot be built, before anything trains."""
    plans: list[StagePlan] = []
    on_base = True  # every stage so far continued one adapter on the experiment's base model
    for i, stage in enumerate(config.stages):
        name = stage.name or stage.train.objective
        if i == 0:
            start = "base"
        else:
            prev = config.stages[i - 1].method
            if not get_method(prev.name).adapter:
                start, on_base = "full", False
            elif same_adapter(prev, stage.method):
                start = "continue"
            elif not get_method(prev.name).mergeable:
                raise TunelabError(
                    f"stages[{i}] ({name}): a {prev.name}-tuning stage cannot be followed by a different method "
                    f"({stage.method.name}): its soft prompt cannot be merged into the weights; use the same "
                    "method settings in both stages, or a LoRA-family method for the earlier one")
            else:
                start, on_base = "merged", False
        plans.append(StagePlan(i, name, stage, start))
    last = config.stages[-1].method
    final = "adapter" if get_method(last.name).adapter and on_base else "full"
    if final == "full" and not get_method(last.name).mergeable:
        raise TunelabError(
            f"stages[{len(plans) - 1}] ({plans[-1].name}): a final {last.name}-tuning stage on top of an earlier "
            "stage's merged or full weights cannot be merged into a loadable model; use a LoRA-family method "
            "for the last stage")
    return plans, final


def stage_config(config: ExperimentConfig, plan: StagePlan, model_name: str) -> ExperimentConfig:
    """The stage as an experiment of its own, in <run_dir>/stages/<i>-<name>/."""
    s = plan.stage
    return config.model_copy(update={
        "name": plan.dirname, "workdir": Path(config.run_dir) / STAGES,
        "model": config.model.model_copy(update={"name": model_name}),
        "data": s.data, "method": s.method, "train": s.train, "mixture": s.mixture, "stages": [],
    })


def _identity(cfg: ExperimentConfig, upstream: str | None, base_model: str) -> tuple[str, dict[str, Any]]:
    """A stage's identity: its sections and the identity of the stage before it (a chain). The model is named
    by the experiment's base model: a later stage's start weights are covered by the upstream identity."""
    sections = {k: v for k, v in cfg.resolved().items() if k in ("model", "data", "method", "train", "mixture")}
    sections["model"] = {**sections["model"], "name": base_model}
    blob = json.dumps({"sections": sections, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16], sections


def _dataset_hash(cfg: ExperimentConfig) -> str:
    from .mixture import mixture_hash

    data_dir = Path(cfg.run_dir) / "data"
    if cfg.mixture:
        return mixture_hash(cfg.mixture, cfg.data, data_dir, preparer(cfg))
    return preparer(cfg)(cfg.data, data_dir)["dataset_hash"]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _completed(cfg: ExperimentConfig, identity: str, sections: dict[str, Any], dist: Dist | None) -> bool:
    """True when the stage directory holds a finished run of this very stage; raises when it holds a
    finished run of another config (resuming past it would silently mix two experiments)."""
    stage_dir = Path(cfg.run_dir)
    summary = _read_json(stage_dir / "summary.json")
    record = _read_json(stage_dir / STAGE_FILE)
    if not summary or summary.get("status") not in DONE or not record:
        return False
    if record.get("identity") != identity:
        problems = describe_differences(record.get("sections", {}), sections)
        why = "\n  ".join(problems[:20]) if problems else "an earlier stage was trained again since"
        raise TunelabError(
            f"stage {cfg.name} in {stage_dir} was completed with a different config, so it cannot be skipped:"
            f"\n  {why}\nRestore the original config, or start over in a new run directory.")
    first = dist.main_first() if dist is not None else contextlib.nullcontext()
    with first:
        current = _dataset_hash(cfg)
    if current != summary.get("dataset_hash"):
        raise TunelabError(f"stage {cfg.name}: its training data changed since it completed (dataset hash "
                           f"{summary.get('dataset_hash')}, now {current}); start over in a new run directory")
    return True


def _save_merged(base: str, adapter_dir: Path, tokenizer, out_dir: Path) -> None:
    merged = merge_adapter(base, adapter_dir)
    with atomic_dir(out_dir, kind=MERGED) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def _has_outputs(run_dir: Path) -> bool:
    root = run_dir / STAGES
    if not root.is_dir():
        return False
    return any(latest_checkpoint(d) is not None or (d / "summary.json").is_file() for d in root.iterdir() if d.is_dir())


def _move_aside(paths: list[Path]) -> None:
    """Stage directories made from an earlier version of an upstream stage: kept, renamed, never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in paths:
        if path.exists():
            path.rename(path.with_name(f"{path.name}.stale-{stamp}"))


def _copy_artifact(stage_dir: Path, files: list[str], run_dir: Path) -> None:
    """The last stage's artifact files into the run directory (copied to a temporary directory next to
    it, then renamed into place)."""
    from .artifacts import _move_into

    tmp = Path(tempfile.mkdtemp(prefix=".artifacts.", dir=run_dir))
    try:
        for name in files:
            src = stage_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            else:
                shutil.copy2(src, tmp / name)
        _move_into(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _entry(plan: StagePlan, cfg: ExperimentConfig, identity: str, start: dict[str, Any], summary: dict[str, Any],
           skipped: bool) -> dict[str, Any]:
    return {
        "index": plan.index, "name": plan.name, "dir": f"{STAGES}/{plan.dirname}",
        "objective": cfg.train.objective, "method": cfg.method.name,
        "config_fingerprint": cfg.fingerprint("data", "method", "train", "mixture"), "identity": identity,
        "dataset_hash": summary.get("dataset_hash"),
        "start": {**start, "weights_sha256": summary.get("start_weights_sha256")},
        "end_weights_sha256": summary.get("end_weights_sha256"),
        "status": summary.get("status"), "steps": summary.get("steps"), "skipped_on_resume": skipped,
        **{k: summary.get(k) for k in ("final_train_loss", "final_val_loss", "best_val_loss", "train_seconds",
                                      "tokens_trained")},
    }


def run_stages(config: ExperimentConfig, *, resume: bool = False, dry_run: bool = False, callback=None,
               progress: bool = True, dist: Dist | None = None):
    """Train every stage in order into <run_dir>/stages/, then write the final artifact, lineage.json,
    summary.json and train_log.jsonl into <run_dir>; see the module docstring."""
    started = time.perf_counter()
    plans, final_kind = plan_stages(config)
    run_dir = Path(config.run_dir)
    is_main = dist is None or dist.is_main
    if dry_run:
        planned = []
        for plan in plans:  # shapes and data only: every stage planned on the base model
            cfg = stage_config(config, plan, config.model.name)
            result = train_one(cfg, dry_run=True, progress=False, dist=dist)
            planned.append({"stage": plan.dirname, **(result.plan or {})})
        return TrainResult(run_dir, "planned", plan={"stages": planned})
    if not resume and _has_outputs(run_dir):
        raise TunelabError(f"{run_dir} already holds stages of an earlier run: pass --resume to continue it, or "
                           "pick another experiment name (or remove the directory) to start over")
    if is_main:
        save_resolved(config, run_dir)

    entries: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    upstream: str | None = None
    retrained = False
    prev: tuple[StagePlan, ExperimentConfig] | None = None
    result = None
    for plan in plans:
        model_name, start_adapter, start = config.model.name, None, {"kind": "base", "model": config.model.name}
        if prev is not None:
            prev_plan, prev_cfg = prev
            prev_dir = Path(prev_cfg.run_dir)
            rel = f"{STAGES}/{prev_plan.dirname}"
            if plan.start == "full":
                model_name, start = str(prev_dir), {"kind": "full", "model": rel, "from_stage": prev_plan.name}
            elif plan.start == "continue":
                model_name, start_adapter = prev_cfg.model.name, prev_dir
                start = {"kind": "continue", "model": model_name, "adapter": rel, "from_stage": prev_plan.name}
            else:
                merged = prev_dir / MERGED
                if is_main and (retrained or not (merged / "config.json").is_file()):
                    _save_merged(prev_cfg.model.name, prev_dir, load_tokenizer_for(prev_cfg), merged)
                if dist is not None:
                    dist.barrier()
                model_name = str(merged)
                start = {"kind": "merged", "model": f"{rel}/{MERGED}", "from_stage": prev_plan.name}
        cfg = stage_config(config, plan, model_name)
        identity, sections = _identity(cfg, upstream, config.model.name)
        stage_dir = Path(cfg.run_dir)
        skipped = resume and not retrained and _completed(cfg, identity, sections, dist)
        if callback is not None and is_main:
            callback({"event": "stage", "index": plan.index, "name": plan.name, "run_dir": str(stage_dir),
                      "status": "skipped" if skipped else "started"})
        if skipped:
            summary = _read_json(stage_dir / "summary.json") or {}
        else:
            if resume and not retrained and is_main:
                _move_aside([Path(config.run_dir) / STAGES / p.dirname for p in plans[plan.index + 1:]])
            retrained = True
            tagged = (lambda e, n=plan.name: callback({**e, "stage": n})) if callback is not None else None
            result = train_one(cfg, resume=resume and latest_checkpoint(stage_dir) is not None, callback=tagged,
                               progress=progress, dist=dist, start_adapter=start_adapter)
            summary = result.summary
            if is_main:
                write_json(stage_dir / STAGE_FILE, {"identity": identity, "upstream": upstream, "start": start,
                                                    "sections": sections})
        summaries.append(summary)
        entries.append(_entry(plan, cfg, identity, start, summary, skipped))
        if summary.get("status") not in DONE:
            break
        upstream, prev = identity, (plan, cfg)

    status = "completed" if all(s.get("status") in DONE for s in summaries) and len(summaries) == len(plans) \
        else summaries[-1].get("status", "interrupted")
    artifact = None
    if status == "completed" and is_main:
        artifact = _final_artifact(config, prev, final_kind)
    summary = _overall(config, summaries, entries, status, artifact, time.perf_counter() - started)
    if is_main:
        _write_outputs(run_dir, config, plans, entries, summary, final_kind, artifact)
    if dist is not None:
        dist.barrier()
    return TrainResult(run_dir, status, summary, model=result.model if result is not None else None)


def _final_artifact(config: ExperimentConfig, last: tuple[StagePlan, ExperimentConfig] | None,
                    final_kind: str) -> dict[str, Any]:
    assert last is not None
    plan, cfg = last
    stage_dir = Path(cfg.run_dir)
    stage_summary = _read_json(stage_dir / "summary.json") or {}
    kind = (stage_summary.get("artifact") or {}).get("kind")
    if final_kind == "adapter" or kind == "full":
        files = (stage_summary.get("artifact") or {}).get("files") or []
        _copy_artifact(stage_dir, files, Path(config.run_dir))
        return {"kind": kind, "path": str(config.run_dir), "files": files, "from_stage": plan.dirname}
    tokenizer = load_tokenizer_for(cfg)
    merged = merge_adapter(cfg.model.name, stage_dir)
    artifact = save_artifacts(Path(config.run_dir), merged, tokenizer, adapter=False)
    return {**artifact, "from_stage": plan.dirname, "merged_adapter": True}


def _overall(config: ExperimentConfig, summaries: list[dict[str, Any]], entries: list[dict[str, Any]],
             status: str, artifact: dict[str, Any] | None, wall: float) -> dict[str, Any]:
    """The last stage's summary, with totals over the stages and the stage list."""
    last = dict(summaries[-1]) if summaries else {}
    seconds = sum(s.get("train_seconds") or 0 for s in summaries)
    tokens = sum(s.get("tokens_trained") or 0 for s in summaries)
    last.update({
        "status": status, "name": config.name, "model": config.model.name, "artifact": artifact,
        "steps": sum(s.get("steps") or 0 for s in summaries),
        "total_steps": sum(s.get("total_steps") or 0 for s in summaries),
        "tokens_trained": tokens, "train_seconds": round(seconds, 3), "wall_seconds": round(wall, 3),
        "train_cpu_seconds": round(sum(s.get("train_cpu_seconds") or 0 for s in summaries), 3),
        "tokens_per_s": round(tokens / seconds, 2) if seconds else None,
        "stages": entries, "lineage": "lineage.json",
    })
    return last


def _write_outputs(run_dir: Path, config: ExperimentConfig, plans: list[StagePlan], entries: list[dict[str, Any]],
                   summary: dict[str, Any], final_kind: str, artifact: dict[str, Any] | None) -> None:
    load = ("PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), run_dir)"
            if final_kind == "adapter" else "AutoModelForCausalLM.from_pretrained(run_dir)")
    write_json(run_dir / "lineage.json", {
        "experiment": config.name, "base_model": config.model.name, "status": summary["status"],
        "final": {"kind": final_kind, "path": str(run_dir), "load": load, "written": artifact is not None},
        "stages": entries, "planned_stages": [p.dirname for p in plans],
    })
    write_json(run_dir / "summary.json", summary)
    rows: list[dict[str, Any]] = []
    offset = 0
    for entry in entries:
        log = Path(run_dir) / entry["dir"] / "train_log.jsonl"
        stage_rows = read_jsonl(log) if log.is_file() else []
        for row in stage_rows:
            rows.append({**row, "stage": entry["name"], "global_step": offset + row.get("step", 0)})
        offset += entry.get("steps") or 0
    write_jsonl(run_dir / "train_log.jsonl", rows)
