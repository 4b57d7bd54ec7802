"""`tunelab data synth`: documents -> chunks -> teacher LLM -> filters -> a dataset directory.

    from tunelab.config import SynthConfig
    from tunelab.synth.run import run

    result = run(SynthConfig(docs="docs/", teacher="openai:llama3.1@http://localhost:11434/v1"), "out/")
    result.manifest["records"], result.manifest["yield"], result.manifest["filters"]

The output directory (built in a temporary directory and renamed into place; a failed or interrupted
run writes nothing):

    train.jsonl          the kept records, in the input formats `tunelab data prepare` reads (chat:
                         messages; label: text + label; preference: prompt + chosen + rejected), each
                         with provenance in `meta`: source document, chunk_id, heading, teacher,
                         prompt_version, synth_mode, and the grounding scores it passed
    eval.jsonl           the eval set, when one was asked for (see evalset.py)
    manifest.json        counts, yield per chunk, teacher failures and filter drops by reason, teacher,
                         prompt versions (and file hashes), the eval-set choice, the resolved config
    review/dropped.jsonl every generated record a filter removed, with the filter, reason and detail
    review/failures.jsonl every teacher call that gave no usable reply, with its reason and last reply
    review/chunks.jsonl  every chunk: split, what the teacher made of it, how many records were kept

So `tunelab data prepare OUT/train.jsonl --eval OUT/eval.jsonl --out DATASET` (or `data.train:
OUT/train.jsonl` in an experiment) takes it as it is.

Resuming: teacher calls go through the disk cache (tunelab.llm.cache) unless it is off, and every
answer is saved the moment it arrives. After an interruption, running the same command again pays
only for the calls that had not come back; a re-run with the same inputs makes no calls at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, SynthConfig, TeacherConfig
from ..documents.chunk import Chunk, chunk_documents
from ..documents.ingest import ingest
from ..errors import TunelabError
from ..io import atomic_dir, check_output_dir, write_json, write_jsonl
from ..llm.spec import Backend
from .evalset import TESTS, hold_out, paraphrase
from .filters import FilterReport, apply_cheap_filters
from .generate import MODES, Candidate, ChunkReply, Provenance, ask_teacher
from .templates import PromptTemplate, load_template

SYNTH_FORMAT = 1
MANIFEST = "manifest.json"
OUTPUT_KIND = "synth"  # the marker kind of a synth output directory (tunelab.io.check_output_dir)
RECORD_FORMAT = {"chat": "chat", "label": "label", "preference": "preference"}

Progress = Callable[[str, int, int], None]


@dataclass
class SynthResult:
    out_dir: Path
    manifest: dict[str, Any]
    files: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        m = self.manifest
        return {"out_dir": str(self.out_dir), "records": m["records"], "yield": m["yield"],
                "chunks": m["chunks"], "teacher_calls": m["teacher_calls"],
                "dropped": {k: v["dropped"] for k, v in m["filters"]["train"]["steps"].items()},
                "eval_set": m["eval_set"], "files": [str(f) for f in self.files], "next": m["next"]}


def teacher_backend(cfg: TeacherConfig) -> Backend:
    """The backend a TeacherConfig describes, behind the call cache when it is on."""
    from ..llm import backend_from_spec, parse_spec

    if parse_spec(cfg.spec).kind == "openai":
        options: dict[str, Any] = {"api_key_env": cfg.api_key_env, "concurrency": cfg.concurrency,
                                   "timeout_s": cfg.timeout_s, "max_retries": cfg.max_retries}
    else:
        # On a shared machine two spinning OpenMP threads can be many times slower than one, so
        # TUNELAB_THREADS (as training and RAG read it) applies here too.
        threads = cfg.threads or int(os.environ.get("TUNELAB_THREADS", 0)) or None
        options = {"batch_size": cfg.batch_size, "threads": threads}
    cache = (cfg.cache_dir or True) if cfg.cache else None
    return backend_from_spec(cfg.spec, cache=cache, **options)


def from_experiment(config: ExperimentConfig) -> SynthConfig:
    """The experiment's synth section, its output defaulting to <run_dir>/synth."""
    if config.synth is None:
        raise TunelabError(f"experiment '{config.name}' has no synth section (docs, teacher, ...)")
    synth = config.synth.model_copy(deep=True)
    if synth.out is None:
        from ..config import RUN_DIR_KIND
        from ..io import claim_output_dir

        # the experiment's run directory, claimed as `tunelab run` and `tunelab train` claim it, so that
        # they accept it afterwards (and a user's folder in its place is refused here, untouched)
        synth.out = claim_output_dir(config.run_dir, RUN_DIR_KIND) / "synth"
    return synth


def _check_out(out: Path, docs: Path) -> None:
    """Never replace something that is not an earlier synth output, and never write into the docs (the
    next ingest would read the dataset as documents)."""
    out_r, docs_r = out.resolve(), docs.resolve()
    if out_r == docs_r or docs_r in out_r.parents or out_r in docs_r.parents:
        raise TunelabError(f"output {out} and documents {docs} overlap; write the dataset somewhere else")
    check_output_dir(out, OUTPUT_KIND, [docs])


def _spread(chunks: list[Chunk], k: int) -> list[Chunk]:
    """k chunks evenly spaced over the list (so every document is represented), in order."""
    if k >= len(chunks):
        return chunks
    return [chunks[(i * len(chunks)) // k] for i in range(k)]


def _slice_size(backend: Backend) -> int:
    # enough chunks per call to keep every connection (or a few batches) busy, few enough that
    # progress is reported and filters see results while a long run goes on
    width = getattr(backend, "concurrency", None) or getattr(backend, "batch_size", None) or 4
    return max(16, 4 * int(width))


def _generate(backend: Backend, template: PromptTemplate, chunks: list[Chunk], config: SynthConfig,
              provenance: Provenance, progress: Progress, stage: str) -> list[ChunkReply]:
    mode = MODES[config.mode]
    replies: list[ChunkReply] = []
    step = _slice_size(backend)
    progress(stage, 0, len(chunks))
    for start in range(0, len(chunks), step):
        replies += ask_teacher(backend, template, chunks[start : start + step], mode, provenance,
                               per_chunk=config.per_chunk, turns=config.turns, labels=config.labels,
                               retries=config.parse_retries, temperature=config.temperature,
                               max_tokens=config.max_tokens, seed=config.seed)
        progress(stage, len(replies), len(chunks))
    return replies


def _read_pool(paths: Sequence[Path]) -> list:
    if not paths:
        return []
    from ..data.formats import read_records

    return read_records(list(paths)).records


def _final_check(cands: list[Candidate], report: FilterReport, split: str) -> list[Candidate]:
    """Every row goes through the data layer's own validation, so nothing `data prepare` would reject
    is written. The schemas should make this a no-op; a drop here is counted, never hidden."""
    from ..data.formats import to_record
    from .filters import Dropped

    kept, dropped = [], []
    for c in cands:
        _, problems = to_record(c.to_row(), RECORD_FORMAT[c.record.kind], f"{split}.jsonl", None)
        if problems:
            dropped.append(Dropped(c, "format", "invalid_record", "; ".join(str(p) for p in problems)[:300]))
        else:
            kept.append(c)
    report.add("format", len(cands), dropped)
    return kept


def _failure_rows(replies: list[ChunkReply], stage: str) -> list[dict[str, Any]]:
    return [{"chunk_id": r.chunk.id, "source": r.chunk.source, "stage": stage, "error_kind": r.result.error_kind,
             "error": r.result.error, "attempts": r.result.attempts, "reply": (r.result.text or "")[:500]}
            for r in replies if not r.result.ok]


def _call_stats(replies: list[ChunkReply]) -> dict[str, Any]:
    failures = Counter(r.result.error_kind for r in replies if not r.result.ok)
    return {"requests": len(replies), "attempts": sum(r.result.attempts for r in replies),
            "cached_attempts": sum(r.result.attempts for r in replies if r.result.cached),
            "ok": sum(r.result.ok for r in replies), "failures": dict(failures),
            "extra_items_cut": sum(r.extra_items for r in replies)}


def _yield(replies: list[ChunkReply], kept: list[Candidate]) -> dict[str, Any]:
    per_chunk = Counter(c.chunk.id for c in kept)
    counts = [per_chunk.get(r.chunk.id, 0) for r in replies]
    n = len(replies)
    return {
        "chunks": n,
        "records_per_chunk": round(sum(counts) / n, 3) if n else 0.0,
        "candidates_per_chunk": round(sum(len(r.candidates) for r in replies) / n, 3) if n else 0.0,
        "chunks_with_records": sum(1 for x in counts if x),
        "chunks_without_records": sum(1 for x in counts if not x),
        "histogram": {str(k): v for k, v in sorted(Counter(counts).items())},
    }


def run(config: SynthConfig, out_dir: str | Path | None = None, *, teacher: Backend | None = None,
        judge: Backend | None = None, on_progress: Progress | None = None) -> SynthResult:
    """Generate a dataset from `config.docs` into `out_dir` (default config.out); see the module doc.
    `teacher`/`judge` replace the backends the config names (a notebook can pass its own)."""
    owned = []  # backends built here are closed here (their connection pools)
    if teacher is None:
        teacher = teacher_backend(config.teacher)
        owned.append(teacher)
    if judge is None and config.judge is not None:
        from ..evaluate.judge import judge_backend

        judge = judge_backend(config.judge)
        owned.append(judge)
    try:
        return _run(config, out_dir, teacher, judge, on_progress or (lambda _stage, _done, _total: None))
    finally:
        for backend in owned:
            close = getattr(backend, "close", None)
            if callable(close):
                close()


def _run(config: SynthConfig, out_dir: str | Path | None, teacher: Backend, judge: Backend | None,
         progress: Progress) -> SynthResult:
    out = Path(out_dir or config.out or "")
    if not str(out_dir or config.out or ""):
        raise TunelabError("no output directory: give --out (or synth.out in the config)")
    docs = Path(config.docs)
    if not docs.exists():
        raise TunelabError(f"documents {docs}: no such file or directory")
    _check_out(out, docs)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal t0
        timings[name] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()

    # -- documents and chunks --------------------------------------------------------------------
    progress("reading documents", 0, 0)
    ingested = ingest(docs)
    if not ingested.documents:
        reasons = "; ".join(str(s) for s in ingested.skipped[:10]) or "the directory has no files"
        raise TunelabError(f"no readable documents in {docs} ({reasons}); nothing was written")
    all_chunks = chunk_documents(ingested.documents, config.chunk_tokens, config.chunk_overlap)
    usable = [c for c in all_chunks if c.n_tokens >= config.min_chunk_tokens]
    sampled = _spread(usable, config.max_chunks) if config.max_chunks else usable
    if not sampled:
        raise TunelabError(f"every chunk of {docs} has fewer than {config.min_chunk_tokens} tokens "
                           "(synth.min_chunk_tokens); nothing was written")
    if config.eval_set == "held_out":
        train_chunks, eval_chunks = hold_out(sampled, config.eval_fraction, config.seed)
    else:
        train_chunks, eval_chunks = sampled, []
    tick("ingest_chunk")

    # -- prompts and backends --------------------------------------------------------------------
    mode = MODES[config.mode]
    templates = {config.mode: load_template(config.mode, config.prompts, mode.placeholders)}
    if config.eval_set == "paraphrase":
        templates["paraphrase"] = load_template("paraphrase", config.prompts, ("question",))
    if judge is not None:
        templates["judge_grounding"] = load_template("judge_grounding", config.prompts, ("text", "answer"))
        templates["judge_label"] = load_template("judge_label", config.prompts, ("label", "example"))
    pool = _read_pool(config.filters.pool)
    cache = getattr(teacher, "cache", None)
    cache_before = cache.stats() if cache is not None else None
    provenance = Provenance(teacher.name, templates[config.mode].version, config.mode)

    # -- generation ------------------------------------------------------------------------------
    replies = _generate(teacher, templates[config.mode], train_chunks, config, provenance, progress, "generating")
    eval_replies = _generate(teacher, templates[config.mode], eval_chunks, config, provenance, progress,
                             "generating (held-out sections)") if eval_chunks else []
    tick("generate")

    # -- filters ---------------------------------------------------------------------------------
    progress("filtering", 0, 0)
    reports = {"train": FilterReport(), "eval": FilterReport()}
    kept = apply_cheap_filters([c for r in replies for c in r.candidates], config.filters, pool,
                               reports["train"], config.seed)
    if judge is not None:
        kept = _judge(kept, judge, templates, config, reports["train"], progress, "judging")
    kept = _final_check(kept, reports["train"], "train")
    eval_kept: list[Candidate] = []
    if eval_replies:
        eval_kept = apply_cheap_filters([c for r in eval_replies for c in r.candidates], config.filters,
                                        [*pool, *(c.record for c in kept)], reports["eval"], config.seed)
        if judge is not None:
            eval_kept = _judge(eval_kept, judge, templates, config, reports["eval"], progress,
                               "judging (held-out sections)")
        for c in eval_kept:
            c.record.meta["eval_source"] = "held_out"
        eval_kept = _final_check(eval_kept, reports["eval"], "eval")
    tick("filter")

    paraphrase_stats = None
    para_failures: list[dict[str, Any]] = []
    if config.eval_set == "paraphrase":
        progress("paraphrasing", 0, 0)
        para = paraphrase(kept, teacher, templates["paraphrase"], fraction=config.eval_fraction, seed=config.seed,
                          retries=config.parse_retries, temperature=config.temperature)
        reports["eval"].add("paraphrase", para.sampled, para.dropped)
        eval_kept = apply_cheap_filters(para.candidates, config.filters.model_copy(
            update={"pool": [], "similar_threshold": 1.0}), [], reports["eval"], config.seed)
        eval_kept = _final_check(eval_kept, reports["eval"], "eval")
        para_failures = para.failed
        paraphrase_stats = {"requests": para.sampled, "attempts": para.attempts,
                            "cached_attempts": para.cached_attempts, "failures": para.failures}
        tick("paraphrase")

    if not kept:
        raise TunelabError(_nothing_kept(replies, reports["train"]))

    # -- output ----------------------------------------------------------------------------------
    train_rows = [c.to_row() for c in kept]
    eval_rows = [c.to_row() for c in eval_kept]
    calls = _call_stats(replies + eval_replies)
    # how the teacher was held to the schema: grammar (local), json_schema / json_object / prompt (HTTP)
    calls["structured_output"] = getattr(teacher, "structured_output", None)
    if paraphrase_stats is not None:
        calls["paraphrase"] = paraphrase_stats
    if cache is not None:
        after = cache.stats()
        calls["cache"] = {"dir": after["dir"], **{k: after[k] - cache_before[k] for k in ("hits", "misses", "writes")}}
    chunk_rows = _chunk_rows(all_chunks, usable, sampled, eval_chunks, replies + eval_replies, kept + eval_kept)
    manifest = {
        "tunelab_synth": SYNTH_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "docs": str(docs),
        "documents": len(ingested.documents),
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in ingested.skipped],
        "chunks": {"total": len(all_chunks), "too_short": len(all_chunks) - len(usable),
                   "not_sampled": len(usable) - len(sampled), "train": len(train_chunks), "eval": len(eval_chunks)},
        "mode": config.mode,
        "record_kind": mode.kind,
        "teacher": {"name": teacher.name, "identity": teacher.identity()},
        "judge": {"name": judge.name, "identity": judge.identity()} if judge is not None else None,
        "prompts": {name: t.describe() for name, t in templates.items()},
        "teacher_calls": calls,
        "candidates": {"train": sum(len(r.candidates) for r in replies),
                       "eval": sum(len(r.candidates) for r in eval_replies)},
        "filters": {k: v.to_dict() for k, v in reports.items()},
        "records": {"train": len(train_rows), "eval": len(eval_rows)},
        "yield": _yield(replies, kept),
        "eval_set": _eval_manifest(config, eval_chunks, eval_rows, paraphrase_stats),
        "labels": dict(Counter(c.record.label for c in kept)) if mode.kind == "label" else None,
        "dataset_hash": _hash(train_rows, eval_rows),
        "timings_s": timings,
        "config": json.loads(config.model_dump_json()),
        "next": _next_steps(out, bool(eval_rows), config.eval_set),
    }
    files: list[Path] = []
    with atomic_dir(out, kind=OUTPUT_KIND, inputs=[config.docs]) as tmp:
        write_jsonl(tmp / "train.jsonl", train_rows)
        files.append(out / "train.jsonl")
        if eval_rows:
            write_jsonl(tmp / "eval.jsonl", eval_rows)
            files.append(out / "eval.jsonl")
        dropped = [{"split": split, **d.to_row()} for split, rep in reports.items() for d in rep.dropped]
        write_jsonl(tmp / "review" / "dropped.jsonl", dropped)
        write_jsonl(tmp / "review" / "failures.jsonl",
                    _failure_rows(replies, "train") + _failure_rows(eval_replies, "eval") + para_failures)
        write_jsonl(tmp / "review" / "chunks.jsonl", chunk_rows)
        write_json(tmp / MANIFEST, manifest)
        files += [out / "review" / n for n in ("dropped.jsonl", "failures.jsonl", "chunks.jsonl")]
        files.append(out / MANIFEST)
    return SynthResult(out, manifest, files)


def _judge(cands: list[Candidate], judge: Backend, templates: dict[str, PromptTemplate], config: SynthConfig,
           report: FilterReport, progress: Progress, stage: str) -> list[Candidate]:
    from .judge import judge_filter

    retries = config.judge.parse_retries if config.judge is not None else config.parse_retries
    # counted per verdict (a record may need several) as each comes back
    kept, dropped, calls = judge_filter(cands, judge, templates, labels=config.labels, retries=retries,
                                        on_progress=lambda done, total: progress(stage, done, total))
    report.add("judge", len(cands), dropped)
    for key in ("requests", "attempts", "cached_attempts"):
        report.judge_calls[key] = report.judge_calls.get(key, 0) + calls[key]
    failures = report.judge_calls.setdefault("failures", {})
    for kind, n in calls["failures"].items():
        failures[kind] = failures.get(kind, 0) + n
    report.judge_calls["structured_output"] = calls["structured_output"]
    return kept


def _nothing_kept(replies: list[ChunkReply], report: FilterReport) -> str:
    stats = _call_stats(replies)
    drops = {k: v["reasons"] for k, v in report.steps.items() if v["dropped"]}
    lines = [f"no records kept from {len(replies)} chunk(s); nothing was written.",
             f"  teacher replies usable: {stats['ok']} of {stats['requests']}; failures by reason: "
             f"{stats['failures'] or 'none'}",
             f"  generated records dropped by filter: {drops or 'none (the teacher produced none)'}"]
    for r in [r for r in replies if not r.result.ok][:3]:
        reply = " ".join((r.result.text or "").split())[:160]
        lines.append(f"  e.g. chunk {r.chunk.id} ({r.chunk.source}): {r.result.error_kind}: "
                     f"{(r.result.error or '')[:160]}" + (f" | reply: {reply!r}" if reply else ""))
    lines.append("  A small teacher often cannot follow the JSON format: try a larger one (openai:MODEL@URL), "
                 "fewer items per chunk (--per-chunk 1) or a simpler prompt (--prompts DIR).")
    return "\n".join(lines)


def _chunk_rows(all_chunks: list[Chunk], usable: list[Chunk], sampled: list[Chunk], eval_chunks: list[Chunk],
                replies: list[ChunkReply], kept: list[Candidate]) -> list[dict[str, Any]]:
    usable_ids = {c.id for c in usable}
    sampled_ids = {c.id for c in sampled}
    eval_ids = {c.id for c in eval_chunks}
    by_chunk = {r.chunk.id: r for r in replies}
    kept_count = Counter(c.chunk.id for c in kept)
    rows = []
    for c in all_chunks:
        reply = by_chunk.get(c.id)
        split = ("too_short" if c.id not in usable_ids else "not_sampled" if c.id not in sampled_ids
                 else "eval" if c.id in eval_ids else "train")
        rows.append({"id": c.id, "source": c.source, "n_tokens": c.n_tokens, "split": split,
                     "teacher": None if reply is None else ("ok" if reply.result.ok else reply.result.error_kind),
                     "attempts": None if reply is None else reply.result.attempts,
                     "candidates": None if reply is None else len(reply.candidates),
                     "kept": kept_count.get(c.id, 0), "text": c.text})
    return rows


def _eval_manifest(config: SynthConfig, eval_chunks: list[Chunk], eval_rows: list[dict],
                   paraphrase_stats: dict[str, Any] | None) -> dict[str, Any]:
    if config.eval_set == "none":
        return {"how": "none", "records": 0}
    out: dict[str, Any] = {"how": config.eval_set, "tests": TESTS[config.eval_set],
                           "fraction": config.eval_fraction, "records": len(eval_rows)}
    if config.eval_set == "held_out":
        out["sections"] = sorted({c.source for c in eval_chunks})
        out["chunk_ids"] = [c.id for c in eval_chunks]
    else:
        out["sampled"] = paraphrase_stats["requests"] if paraphrase_stats else 0
    return out


def _hash(train_rows: list[dict], eval_rows: list[dict]) -> str:
    h = hashlib.sha256()
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        h.update(name.encode())
        for row in rows:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
    return h.hexdigest()


def _next_steps(out: Path, has_eval: bool, how: str) -> list[str]:
    prepared = out.with_name(out.name + "-prepared")
    prepare = f"tunelab data prepare {out / 'train.jsonl'} --out {prepared}"
    if has_eval and how == "held_out":
        prepare += f" --eval {out / 'eval.jsonl'}"
    steps = [prepare]
    if has_eval and how == "paraphrase":
        steps.append(f"tunelab eval --model MODEL --adapter RUN_DIR --data {out / 'eval.jsonl'}  (paraphrases "
                     "share answers with training records by design: evaluate them directly)")
    return steps
