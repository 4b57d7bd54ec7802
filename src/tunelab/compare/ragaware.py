"""RAG-aware training data: each example rendered with passages retrieved for its question (data.rag_context).

    tcfg = training_config(config, model, rag_aware=True)
    prepared = rag_aware_data(tcfg, Path(config.run_dir) / "data", index_dir_for(config))  # .config, .data, .records
    train.run(prepared.config, data=prepared.data)      # prepared.data.manifest["rag_context"]: the counts

A model tuned on bare question/answer pairs learns to answer from memory and is then distracted by the
passages retrieval puts in its prompt. Here the training examples are built the way the RAG variants of
the comparison are asked at inference (compare.evaluate.rag_records): the question's passages retrieved
from the experiment's own index (rag.docs), put into the last user turn by rag.prompt.build_rag_prompt
with the same template, top-k and token budget, so a trained prompt and an inference prompt for the
same question and passages are the same tokens. The train and rag stages may not import each other, so
the two meet here, in the orchestration layer, and training receives already rendered data.

Robustness mixing (data.rag_context.mix), after RAFT: a seeded draw of exactly round(share x n) examples
(largest remainder) for each way of rendering:
- gold_with_distractors: the top_k retrieved passages; where the gold passage is known (the record's
  chunk_id or source document, as `data synth` writes them, or a `source`/`context` field) and retrieval
  missed it, it is forced in (gold: auto or force) in place of the last passage, at a seeded position;
- distractors_only: top_k retrieved passages that are not gold (where the gold is unknown: the passages
  ranked after the top_k, which hold it less often); the answer stays the record's, or `abstain`;
- no_context: the bare question, as for plain tuning.
The manifest (`rag_context`) records the shares asked, the counts drawn, how often the gold passage was
among the top_k retrieved, how often it was forced in, and how often it reached the prompt (a passage that
does not fit the budget is left out, as at inference).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, RagConfig
from ..config.ragcontext import RagContextConfig
from ..data.records import Record
from ..errors import TunelabError
from .variants import stable_hash

MODES = ("gold_with_distractors", "distractors_only", "no_context")
SEARCH_DEPTH = 50  # passages searched per question: enough to find the gold's best chunk and distractors


def mix_counts(n: int, cfg: RagContextConfig) -> dict[str, int]:
    """Examples per mode: the shares of n, rounded so they sum to n (largest remainder, ties in MODES order)."""
    shares = {m: getattr(cfg.mix, m) * n for m in MODES}
    counts = {m: int(v) for m, v in shares.items()}
    for m in sorted(MODES, key=lambda m: -(shares[m] - counts[m]))[: n - sum(counts.values())]:
        counts[m] += 1
    return counts


def assign_modes(n: int, cfg: RagContextConfig, rng: random.Random) -> list[str]:
    modes = [m for m, c in mix_counts(n, cfg).items() for _ in range(c)]
    rng.shuffle(modes)
    return modes


def gold_of(record: Record) -> dict[str, str] | None:
    """What names the record's gold passage: its chunk_id, source document or context text (or None)."""
    meta = record.meta or {}
    gold = {k: meta[k] for k in ("chunk_id", "source", "context") if isinstance(meta.get(k), str) and meta[k].strip()}
    return gold or None


def _question(record: Record, where: str) -> tuple[list[dict[str, Any]], str]:
    if record.kind != "chat" or not record.messages or record.messages[-1].get("role") != "assistant":
        raise TunelabError(f"data.rag_context: {where} is a {record.kind} record; retrieved passages go into the "
                           "question of chat records that end with an assistant answer")
    prompt = record.prompt_messages()
    return prompt, str(prompt[-1].get("content") or "")


def _where(record: Record, i: int) -> str:
    meta = record.meta or {}
    return f"{meta['file']} line {meta['line']}" if meta.get("file") and meta.get("line") else f"record {i + 1}"


class _Gold:
    """Decides which hits are gold for one record, and finds the gold passage when retrieval missed it."""

    def __init__(self, gold: dict[str, str], rows: Sequence[dict[str, Any]]):
        from ..rag import Hit

        self.gold = gold
        chunk = gold.get("chunk_id")
        self.chunk_id = chunk if chunk and any(r["id"] == chunk for r in rows) else None  # an index chunk
        context = " ".join(gold.get("context", "").split())
        self.context = context
        self.extra = None  # the context field's text when no index chunk holds it
        if context and not any(context in " ".join(r["text"].split()) for r in rows):
            cid = "context-" + hashlib.sha256(context.encode()).hexdigest()[:16]
            self.extra = Hit(cid, gold.get("source", "context"), (), gold["context"], 1.0, 0)

    def is_gold(self, hit: Any) -> bool:
        from ..rag.metrics import matches_gold

        if self.extra is not None:
            return hit.chunk_id == self.extra.chunk_id
        if self.context:
            return self.context in " ".join(hit.text.split())
        if self.chunk_id is not None:
            return hit.chunk_id == self.chunk_id
        return matches_gold(hit, self.gold["source"]) if "source" in self.gold else False

    def passage(self, hits: Sequence[Any]) -> Any | None:
        """The best-ranked gold hit of a deep search, else the context field's text as a passage."""
        return next((h for h in hits if self.is_gold(h)), self.extra)


def _ranked(hits: Sequence[Any]) -> list[Any]:
    return [replace(h, rank=i) for i, h in enumerate(hits, start=1)]


def augment(records: Sequence[Record], hits: Sequence[Sequence[Any]], rows: Sequence[dict[str, Any]],
            cfg: RagContextConfig, rag: RagConfig, tokenizer: Any, seed: int) -> tuple[list[Record], dict[str, Any]]:
    """The records rendered per the mix (see the module doc), and the counts for the manifest. `hits`: per
    record, a deep search (best first) for its question; `rows`: the index's chunks."""
    from ..rag.prompt import build_rag_prompt, load_template

    template = load_template(rag.prompt_template)
    top_k = cfg.top_k or rag.top_k
    rng = random.Random(seed)
    modes = assign_modes(len(records), cfg, rng)
    golds = [gold_of(rec) for rec in records]  # with gold: off too, to count how often retrieval found it
    if cfg.gold == "force" and None in golds:
        i = golds.index(None)
        raise TunelabError(f"data.rag_context.gold is force but {_where(records[i], i)} names no gold passage: "
                           "give it a chunk_id, source or context field, or use gold: auto")
    use_gold = cfg.gold != "off"  # off: retrieval decides, the gold is only counted
    stats = {"examples": len(records), "top_k": top_k, "gold": cfg.gold, "seed": seed,
             "prompt_version": template.version, "context_tokens": rag.context_tokens,
             "shares": cfg.mix.model_dump(), "counts": dict.fromkeys(MODES, 0),
             "gold_known": 0, "gold_retrieved": 0, "gold_forced": 0, "gold_in_prompt": 0,
             "passages_dropped_for_budget": 0, "abstain": cfg.abstain}
    out = []
    for i, (rec, mode, gold, found) in enumerate(zip(records, modes, golds, hits, strict=True)):
        prompt, _ = _question(rec, _where(rec, i))
        answer = rec.messages[-1]["content"]
        stats["counts"][mode] += 1
        judge = _Gold(gold, rows) if gold is not None else None
        top = list(found[:top_k])
        if judge is not None:
            stats["gold_known"] += 1
            stats["gold_retrieved"] += any(judge.is_gold(h) for h in top)
        if mode == "no_context":
            out.append(Record("chat", messages=[dict(m) for m in rec.messages], meta={**rec.meta, "rag_mode": mode}))
            continue
        if mode == "gold_with_distractors":
            passages = top
            if judge is not None and use_gold and not any(judge.is_gold(h) for h in top):
                passage = judge.passage(found)
                if passage is not None:
                    passages = top[: top_k - 1]
                    passages.insert(rng.randrange(len(passages) + 1), passage)
                    stats["gold_forced"] += 1
        else:
            # distractors: never the gold; where it is unknown, the passages ranked after the top_k
            pool = [h for h in found if not judge.is_gold(h)] if judge and use_gold else list(found[top_k:])
            passages = pool[:top_k]
            if cfg.abstain is not None:
                answer = cfg.abstain
        built = build_rag_prompt(prompt, _ranked(passages), tokenizer, rag.context_tokens, template=template)
        stats["passages_dropped_for_budget"] += len(built.dropped)
        if judge is not None and mode == "gold_with_distractors" and any(judge.is_gold(h) for h in built.used):
            stats["gold_in_prompt"] += 1
        meta = {**rec.meta, "rag_mode": mode, "rag_chunk_ids": [h.chunk_id for h in built.used]}
        out.append(Record("chat", messages=built.messages + [{"role": "assistant", "content": answer}], meta=meta))
    known = stats["gold_known"]
    stats["gold_retrieved_rate"] = round(stats["gold_retrieved"] / known, 4) if known else None
    return out, stats


@dataclass
class RagAwareData:
    config: ExperimentConfig  # the training config, data.max_length with room for the passages
    data: Any  # train.setup.TrainData, rendered; data.manifest["rag_context"] holds the counts
    records: dict[str, list[Record]]  # per split, the records as rendered (written next to the run)


def rag_aware_data(tcfg: ExperimentConfig, prepared_dir: Path, index_dir: Path,
                   tokenizer: Any = None) -> RagAwareData:
    """The config, rendered data and records of a RAG-aware run: the prepared splits in `prepared_dir`
    (prepared for tcfg.data here when not yet there), each record's question searched in the index of
    rag.docs at `index_dir` (the experiment's, built or updated first), rendered per data.rag_context."""
    from ..rag import build_index, load_index
    from ..rag.prompt import load_template, render
    from ..train.objectives import get_objective
    from ..train.run import load_tokenizer_for, prepare_dataset
    from ..train.setup import TrainData

    cfg = tcfg.data.rag_context
    if cfg is None:
        raise TunelabError("rag_aware_data needs data.rag_context")
    if tcfg.rag.docs is None:
        raise TunelabError("a RAG-aware model is trained with passages from rag.docs, which is not set: name the "
                           "documents directory to retrieve from, or set compare.rag_aware: off")
    if tcfg.stages or tcfg.mixture:
        raise TunelabError("data.rag_context renders one dataset; it cannot be combined with stages or a mixture")
    tokenizer = tokenizer or load_tokenizer_for(tcfg)
    manifest = prepare_dataset(tcfg, prepared_dir)
    splits = {s: _load(prepared_dir, s) for s in ("train", "validation")}
    build_index(tcfg.rag.docs, index_dir, tcfg.rag)
    index = load_index(index_dir)
    seed = cfg.seed if cfg.seed is not None else tcfg.data.seed
    rendered: dict[str, list[Record]] = {}
    stats: dict[str, Any] = {}
    for offset, (split, records) in enumerate(splits.items()):
        questions = [_question(r, _where(r, i))[1] for i, r in enumerate(records)]
        hits = index.search(questions, SEARCH_DEPTH) if questions else []
        rendered[split], stats[split] = augment(records, hits, index.rows, cfg, tcfg.rag, tokenizer, seed + offset)
    # the passages need room: a prompt with them must not be cut to the plain examples' length
    template = load_template(tcfg.rag.prompt_template)
    overhead = len(tokenizer(render(template, "", ""), add_special_tokens=False)["input_ids"])
    tcfg = tcfg.model_copy(deep=True)
    tcfg.data.max_length = tcfg.data.max_length + tcfg.rag.context_tokens + overhead
    objective = get_objective(tcfg.train.objective)
    train, train_stats = objective.build(rendered["train"], tokenizer, tcfg.data.max_length)
    val, val_stats = (objective.build(rendered["validation"], tokenizer, tcfg.data.max_length)
                      if rendered["validation"] else ([], None))
    if not train:
        raise TunelabError("no RAG-aware training example has a token in the loss after rendering")
    digest = stable_hash({s: [r.to_dict() for r in recs] for s, recs in rendered.items()})
    context = {"train": stats["train"], "validation": stats.get("validation"), "index": str(index_dir),
               "max_length": tcfg.data.max_length, "records_sha256": digest}
    manifest = {**manifest, "dataset_hash": stable_hash([manifest["dataset_hash"], digest]), "rag_context": context}
    data = TrainData(train, val, train_stats, val_stats, manifest, manifest["dataset_hash"], rendered["validation"])
    return RagAwareData(tcfg, data, rendered)


def _load(prepared_dir: Path, split: str) -> list[Record]:
    from ..data.prepare import load_split

    return load_split(prepared_dir, split) if (prepared_dir / f"{split}.jsonl").is_file() else []


def write_rag_context(run_dir: Path, prepared: RagAwareData) -> None:
    """The rendered RAG-aware records and their counts, in `<run_dir>/data/` (rag-train.jsonl,
    rag-validation.jsonl, rag-context.json), so a user can read exactly what the model was trained on."""
    from ..io import write_json, write_jsonl

    for split, records in prepared.records.items():
        write_jsonl(Path(run_dir) / "data" / f"rag-{split}.jsonl", [r.to_dict() for r in records])
    write_json(Path(run_dir) / "data" / "rag-context.json", prepared.data.manifest["rag_context"])


def standalone(config: ExperimentConfig) -> RagAwareData | None:
    """For `tunelab train CONFIG` with data.rag_context (None without): the run's own data prepared in
    `<run_dir>/data` and the index at rag.index_dir or `<run_dir>/rag-index`, so the model trained is the
    RAG-aware one the config asks for, never silently a plain one."""
    if config.data.rag_context is None:
        return None
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TunelabError("data.rag_context trains in one process: launch `tunelab train` without "
                           "accelerate/torchrun, or leave data.rag_context out")
    from ..io import claim_output_dir
    from ..rag import index_dir_for
    from ..train.run import OUTPUT_KIND

    run_dir = claim_output_dir(config.run_dir, OUTPUT_KIND)  # before anything is written into it
    prepared = rag_aware_data(config, run_dir / "data", index_dir_for(config))
    write_rag_context(run_dir, prepared)
    return prepared
