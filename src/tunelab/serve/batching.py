"""The transformers engine: continuous batching over one model, several LoRA adapters on one base.

One scheduler thread owns the model. Between two decode steps it admits waiting requests (up to
max_batch rows): their prompts are prefilled together into a fresh KV cache, which is then merged into
the running batch's cache. A row that finishes (an end-of-turn token, a stop string, max_tokens, a
cancel) leaves the batch at once: its row is dropped from the cache, and cache columns that have become
padding for every remaining row are trimmed off.

Layout, as in models.generate: rows are LEFT padded, so every row's newest token sits at the right edge and
one forward serves the whole batch. Each row keeps its own position ids (counted from its first real
token) and attention mask (zero over padding), so a row computes exactly what it would alone: merging
caches pads the shorter one on the left with zero keys/values under a zero mask. The cache is a plain
DynamicCache (full layers only, even for sliding-window models: their masks still apply the window, and
full layers can be padded and merged like any other).

Adapters: the base is wrapped once by PEFT and every adapter loaded onto it under its own name; each
forward passes `adapter_names` (one per row, "__base__" for the base), so requests for different adapters
and the base share one forward pass and the base weights.

Sampling draws from one torch.Generator per request, seeded from the request's seed, so a sampled answer
does not depend on what else is in the batch.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import TunelabError
from ..models.generate import (
    _left_pad,
    _max_positions,
    _single_token_stops,
    accepts_logits_to_keep,
    stop_token_ids,
)
from .engine import EngineBase, Generation, GenerationRequest, Stream

log = logging.getLogger(__name__)
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class _Row:
    gen: Generation
    adapter: str  # PEFT adapter name, or BASE_ADAPTER
    rng: torch.Generator | None  # None: greedy

    @property
    def stream(self) -> Stream:
        return self.gen.stream


class TransformersEngine(EngineBase):
    """Continuous batching over a loaded causal LM (optionally a PeftModel with several LoRA adapters).

    `adapters` maps a served name to the PEFT adapter name loaded on `model`. `max_batch=1` serves one
    request at a time (the baseline a load bench compares against)."""

    kind = "transformers"

    def __init__(self, model: Any, tokenizer: Any, *, base_name: str, adapters: dict[str, str] | None = None,
                 max_batch: int = 32, threads: int | None = None, notes: list[str] | None = None):
        if max_batch < 1:
            raise TunelabError(f"max_batch must be at least 1 (got {max_batch})")
        self.model = model.eval()
        self.adapters = dict(adapters or {})
        super().__init__(tokenizer, base_name, list(self.adapters), _max_positions(model) or 2048, notes)
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.stop_token_ids = stop_token_ids(model, tokenizer)
        if not self.stop_token_ids:
            raise TunelabError("the tokenizer has no end-of-sequence token; generation could never stop early")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_token_ids)
        self._keep_last = accepts_logits_to_keep(model)
        self._peft = hasattr(model, "peft_config")
        self._threads = threads or int(os.environ.get("TUNELAB_THREADS", 0)) or None
        self._cond = threading.Condition()
        self._waiting: deque[_Row] = deque()
        self._closing = False
        # the running batch (touched by the scheduler thread only)
        self._rows: list[_Row] = []
        self._cache: Any = None
        self._attn: torch.Tensor | None = None  # [rows, cached + 1] (the column for the next token included)
        self._next_pos: torch.Tensor | None = None  # [rows, 1]
        self._logits: torch.Tensor | None = None  # [rows, vocab]: what the next token is picked from
        self._counters = {"decode_steps": 0, "prefills": 0, "tokens_generated": 0, "requests_finished": 0,
                          "peak_batch_size": 0}
        self.batch_trace: deque[int] = deque(maxlen=100_000)  # rows in each decode step, oldest first
        self._thread = threading.Thread(target=self._run, name="tunelab-engine", daemon=True)
        self._thread.start()

    # -- the Engine interface (names, context and chat rendering come from EngineBase) -------------------
    def submit(self, request: GenerationRequest) -> Stream:
        stream, max_new = self._open(request)
        rng = None
        if request.temperature > 0:
            rng = torch.Generator(device=self.device)
            seed = request.seed if request.seed is not None else secrets.randbits(63)
            rng.manual_seed(seed % (2**63))
        stops = self.stop_token_ids | _single_token_stops(self.tokenizer, request.stop)
        row = _Row(Generation(stream, request, max_new, stops, self.tokenizer),
                   self.adapters.get(request.model, BASE_ADAPTER), rng)
        with self._cond:
            if self._closing:
                raise TunelabError("the engine is closed")
            self._waiting.append(row)
            self._cond.notify()
        return stream

    def stats(self) -> dict[str, float]:
        with self._cond:
            out = {"queue_depth": float(len(self._waiting)), "batch_size": float(len(self._rows)),
                   "max_batch": float(self.max_batch)}
            out.update({k: float(v) for k, v in self._counters.items()})
        return out

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=60)

    # -- the scheduler -----------------------------------------------------------------------------------
    def _run(self) -> None:
        if self.device.type == "cpu":
            from ..models import physical_cores

            # per thread under OpenMP: the scheduler thread must set it for itself
            torch.set_num_threads(self._threads or physical_cores())
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closing and not self._waiting and not self._rows:
                        self._cond.wait()
                    if self._closing:
                        break
                    newcomers = []
                    while self._waiting and len(self._rows) + len(newcomers) < self.max_batch:
                        newcomers.append(self._waiting.popleft())
                try:
                    newcomers = [r for r in newcomers if not self._cancelled(r)]
                    if newcomers:
                        self._admit(newcomers)
                    if self._rows:
                        self._step()
                except Exception as exc:  # a failed forward (out of memory, a bad adapter) fails its rows only
                    log.exception("generation step failed")
                    for row in {id(r): r for r in [*self._rows, *newcomers]}.values():
                        self._finish(row, "error", error=f"{type(exc).__name__}: {exc}")
                    self._reset()
        with self._cond:
            left = [*self._rows, *self._waiting]
            self._waiting.clear()
        for row in left:
            self._finish(row, "error", error="the engine was closed")
        self._reset()

    def _cancelled(self, row: _Row) -> bool:
        if row.stream.cancelled:
            self._finish(row, "cancelled")
            return True
        return False

    def _reset(self) -> None:
        with self._cond:
            self._rows = []
        self._cache = self._attn = self._next_pos = self._logits = None

    def _admit(self, rows: list[_Row]) -> None:
        """Prefill the newcomers together and merge them into the running batch."""
        from transformers import DynamicCache

        cache = DynamicCache()
        ids, attn = _left_pad([r.gen.request.prompt_ids for r in rows], self.pad_id, self.device)
        positions = (attn.cumsum(-1) - 1).clamp_min(0)
        logits = self._forward(ids, attn, positions, cache, [r.adapter for r in rows])
        attn = torch.cat([attn, attn.new_ones((len(rows), 1))], dim=1)
        next_pos = positions[:, -1:] + 1
        self._counters["prefills"] += 1
        if not self._rows:
            self._cache, self._attn, self._next_pos, self._logits = cache, attn, next_pos, logits
        else:
            width = max(self._attn.shape[1], attn.shape[1])
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, width - 1), _pad_left(theirs.keys, width - 1)])
                mine.values = torch.cat([_pad_left(mine.values, width - 1), _pad_left(theirs.values, width - 1)])
            self._attn = torch.cat([_pad_left(self._attn, width), _pad_left(attn, width)])
            self._next_pos = torch.cat([self._next_pos, next_pos])
            self._logits = torch.cat([self._logits, logits])
        with self._cond:
            self._rows = self._rows + rows
            self._counters["peak_batch_size"] = max(self._counters["peak_batch_size"], len(self._rows))

    def _step(self) -> None:
        """Pick every row's next token, let finished rows leave, and run one decode forward for the rest."""
        picked = self._pick().tolist()
        keep: list[int] = []
        for j, (row, tok) in enumerate(zip(self._rows, picked, strict=True)):
            if self._cancelled(row):
                continue
            if row.gen.advance(tok):
                keep.append(j)
            else:
                with self._cond:
                    self._counters["requests_finished"] += 1
        self._counters["tokens_generated"] += len(picked)
        if len(keep) < len(self._rows):
            if not keep:
                self._reset()
                return
            self._select(keep)
        tokens = torch.tensor([[picked[j]] for j in keep], device=self.device)
        self.batch_trace.append(len(self._rows))
        self._counters["decode_steps"] += 1
        self._logits = self._forward(tokens, self._attn, self._next_pos, self._cache, [r.adapter for r in self._rows])
        self._attn = torch.cat([self._attn, self._attn.new_ones((len(self._rows), 1))], dim=1)
        self._next_pos = self._next_pos + 1

    def _select(self, keep: list[int]) -> None:
        """Keep only the rows `keep` (cache included), then drop leading columns that are padding for all."""
        sel = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(sel)
        self._attn, self._next_pos, self._logits = self._attn[sel], self._next_pos[sel], self._logits[sel]
        lead = int((self._attn.cumsum(-1) == 0).sum(-1).min())
        if lead:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            self._attn = self._attn[:, lead:]
        with self._cond:
            self._rows = [self._rows[j] for j in keep]

    def _pick(self) -> torch.Tensor:
        """Greedy rows take the first maximum; sampled rows draw with their own generator."""
        picked = self._logits.argmax(dim=-1)
        sampled = [j for j, r in enumerate(self._rows) if r.rng is not None]
        if sampled:
            rows = [self._rows[j] for j in sampled]
            draws = sample_rows(self._logits[sampled], [r.gen.request.temperature for r in rows],
                                [r.gen.request.top_p for r in rows], [r.rng for r in rows])
            picked[sampled] = draws
        return picked

    def _finish(self, row: _Row, reason: str, error: str | None = None) -> None:
        row.gen.finish(reason, error=error)
        with self._cond:
            self._counters["requests_finished"] += 1

    def _forward(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache: Any,
                 adapters: list[str]) -> torch.Tensor:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "position_ids": pos,
                                  "past_key_values": cache, "use_cache": True}
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        if self._peft:
            kwargs["adapter_names"] = adapters
        return self.model(**kwargs).logits[:, -1, :]


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` left-padded with zeros along its sequence dim (dim 2 of a [b, heads, seq, d] cache, else dim 1)."""
    dim = 2 if t.dim() == 4 else 1
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def sample_rows(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
                rngs: list[torch.Generator]) -> torch.Tensor:
    """One draw per row after its own temperature and top-p (the top token always stays in)."""
    scores = logits.float() / torch.tensor(temperatures, device=logits.device)[:, None]
    if any(p < 1.0 for p in top_ps):
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= torch.tensor(top_ps, device=logits.device)[:, None]
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(dim=-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=rngs[i]) for i in range(len(rngs))])


def load_transformers_engine(base: str, adapters: dict[str, Path], *, device: str = "auto", max_batch: int = 32,
                             dtype: str = "auto") -> TransformersEngine:
    """The base through tunelab.models, each adapter checked (served.py) and loaded onto the same base."""
    from ..models.adapters import apply_adapter
    from ..models.loading import load_model_and_tokenizer, resolve_device
    from ..models.registry import resolve
    from . import served

    target = resolve_device(device)
    ref = resolve(base)
    name = served.served_name(ref)
    checked = served.check_adapters(base, name, adapters)
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(ref, dtype=dtype, device=target)
    notes = served.choose_template(tokenizer, {n: d for n, (d, _) in checked.items()})
    names: dict[str, str] = {}
    for i, (served_as, (directory, _)) in enumerate(checked.items()):
        peft_name = f"adapter{i}"  # PEFT module keys cannot hold every character a served name may
        model, report = apply_adapter(model, directory, base_name=base, adapter_name=peft_name)
        notes.extend(f"adapter '{served_as}': {w}" for w in report.warnings)
        names[served_as] = peft_name
    log.info("loaded %s with %d adapter(s) on %s in %.1fs", name, len(names), target, time.perf_counter() - t0)
    return TransformersEngine(model, tokenizer, base_name=name, adapters=names, max_batch=max_batch, notes=notes)
