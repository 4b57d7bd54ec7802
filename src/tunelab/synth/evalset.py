"""Eval sets from documents, chosen explicitly and recorded in the manifest:

- held_out: whole sections (a document's heading) are kept away from training, and the records made
  from their chunks form the eval set. It tests retrieval and generalisation: the model never trained
  on those facts, so only RAG (or general knowledge) can answer. Whole sections, not single chunks,
  because neighbouring chunks of a section share overlap text: holding out one of them alone would
  leak its text into training.
- paraphrase: a sample of the kept training records gets its question reworded by the teacher (prompt
  paraphrase), answer unchanged. It tests whether the facts were learned rather than the wording.
  These records share their answers with training records by design: `tunelab eval --data` them
  directly; given to `data prepare --eval`, its leak check may remove those whose answer dominates
  the record (MinHash Jaccard >= the near-duplicate threshold).

Both selections are deterministic: a sha256 of the seed and the section (or record) orders them.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from ..data.dedup import normalise_for_exact
from ..documents.chunk import Chunk
from ..errors import TunelabError
from ..llm.spec import Backend
from ..llm.structured import complete_structured
from .filters import Dropped
from .generate import Candidate, NonBlank
from .templates import PromptTemplate

TESTS = {
    "held_out": "retrieval and generalisation: records about sections never trained on",
    "paraphrase": "whether the facts were learned: training questions reworded, answers unchanged",
}


def _rank(seed: int, *parts: str) -> str:
    return hashlib.sha256("\x1f".join((str(seed), *parts)).encode("utf-8")).hexdigest()


def hold_out(chunks: Sequence[Chunk], fraction: float, seed: int) -> tuple[list[Chunk], list[Chunk]]:
    """(train chunks, eval chunks): whole sections, in a seeded order, until `fraction` of the chunks."""
    groups: dict[tuple[str, tuple[str, ...]], list[Chunk]] = {}
    for c in chunks:
        groups.setdefault((c.doc, c.heading), []).append(c)
    if len(groups) < 2:
        raise TunelabError(f"eval_set held_out needs at least two sections to keep one from training; "
                           f"the documents give {len(groups)}")
    order = sorted(groups, key=lambda g: _rank(seed, g[0], " > ".join(g[1])))
    target = fraction * len(chunks)
    held: set[tuple[str, tuple[str, ...]]] = set()
    count = 0
    for g in order[:-1]:  # never every section
        if count >= target:
            break
        held.add(g)
        count += len(groups[g])
    train = [c for c in chunks if (c.doc, c.heading) not in held]
    evals = [c for c in chunks if (c.doc, c.heading) in held]
    return train, evals


class Paraphrase(BaseModel):
    paraphrase: NonBlank


@dataclass
class ParaphraseResult:
    candidates: list[Candidate]
    sampled: int
    dropped: list[Dropped] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    cached_attempts: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)


def sample_for_paraphrase(cands: Sequence[Candidate], fraction: float, seed: int) -> list[Candidate]:
    if not cands:
        return []
    n = max(1, math.ceil(fraction * len(cands)))
    ranked = sorted(range(len(cands)), key=lambda i: _rank(seed, cands[i].chunk.id, cands[i].prompt_text))
    return [cands[i] for i in sorted(ranked[:n])]


def paraphrase(
    cands: Sequence[Candidate],
    backend: Backend,
    template: PromptTemplate,
    *,
    fraction: float,
    seed: int,
    retries: int = 2,
    temperature: float = 0.0,
    max_tokens: int = 256,
) -> ParaphraseResult:
    """Eval candidates: a sample of `cands` with the first question reworded by the teacher."""
    sample = sample_for_paraphrase(cands, fraction, seed)
    convs = [template.render(question=c.questions[0]) for c in sample]
    results = complete_structured(backend, convs, Paraphrase, retries=retries, temperature=temperature,
                                  max_tokens=max_tokens, seed=seed) if convs else []
    out = ParaphraseResult([], len(sample))
    failures: Counter[str] = Counter()
    for c, res in zip(sample, results, strict=True):
        out.attempts += res.attempts
        out.cached_attempts += res.attempts if res.cached else 0
        if not res.ok:
            failures[res.error_kind or "unknown"] += 1
            out.failed.append({"chunk_id": c.chunk.id, "source": c.chunk.source, "stage": "paraphrase",
                               "error_kind": res.error_kind, "error": res.error, "attempts": res.attempts,
                               "reply": (res.text or "")[:500]})
            continue
        new = res.value.paraphrase
        reworded = _reworded(c, new, template.version)
        if normalise_for_exact(new) == normalise_for_exact(c.questions[0]):
            out.dropped.append(Dropped(reworded, "paraphrase", "not_a_paraphrase", f"same words as {c.questions[0]!r}"))
            continue
        out.candidates.append(reworded)
    out.failures = dict(failures)
    return out


def _reworded(c: Candidate, new: str, version: str) -> Candidate:
    rec = c.record
    meta = {**rec.meta, "eval_source": "paraphrase", "paraphrase_of": c.questions[0],
            "paraphrase_prompt_version": version}
    if rec.kind == "label":
        record = replace(rec, text=new, meta=meta)
        prompt = new
    else:
        extra = c.source_extra
        prompt = f"{new}\n\n{extra}" if extra else new
        messages = [dict(m) for m in rec.messages]
        messages[0] = {"role": "user", "content": prompt}
        record = replace(rec, messages=messages, meta=meta)
    return Candidate(record, c.chunk, [new, *c.questions[1:]], list(c.answers), prompt, c.rejected,
                     c.source_extra, dict(c.checks))
