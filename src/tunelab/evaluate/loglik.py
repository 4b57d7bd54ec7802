"""Log-likelihood of (context, continuation) pairs, scored the way lm-evaluation-harness scores them.

This is the engine under the multiple-choice benchmarks and under label scoring. Its numbers follow
lm-eval 0.4.x's Hugging Face backend, so a user can put them next to lm-eval's:

- trailing whitespace of the context moves onto the continuation (lm-eval uses `rstrip()`, so a
  trailing newline moves too);
- context and continuation are encoded together, and the continuation's tokens are
  `whole[len(enc(context)):]`; the input is `enc(context) + those tokens`;
- encoding uses the tokenizer's own special-token default, except that a text that already starts
  with the prefix token's text is encoded without special tokens (no doubled BOS);
- an empty context becomes the prefix token (BOS, or EOS when there is no BOS), the continuation
  being encoded without special tokens; if the continuation itself starts with that token, its first
  token is the context instead;
- an input longer than the model's maximum length is cut from the left: the last `max_length + 1`
  tokens are kept and the final one is not fed;
- ll = sum of log-softmax over the continuation tokens; is_greedy = the argmax at every continuation
  position is the continuation token.

What differs is the arithmetic, not the result. lm-eval runs every context+continuation row in full
and takes a log-softmax over the whole vocabulary at every position. Here every token is computed
once: a context is followed, in one packed row, by all its continuations, and a tree-shaped
attention mask (with matching position ids) lets each continuation see its context and itself but
not its siblings, so the context is not recomputed per choice; many small items share one row.
Contexts that share a long token prefix (TruthfulQA's six-pair primer) run that prefix once and reuse
its KV cache. Identical requests are scored once, and logits are projected only where a token is
scored. Attention is causal, so a token's hidden state depends only on the tokens it may see: the
packing changes nothing but float rounding (~1e-5 in a log-likelihood). A built-in check compares
one packed result with a plain forward pass and falls back to lm-eval's full rows if they disagree
(a model that ignores custom masks or position ids), as it does for prompt-learning adapters,
attention kernels without custom masks and sliding windows shorter than a request.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TunelabError
from ..models.generate import accepts_logits_to_keep

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither config nor tokenizer names a length
_TOKENIZER_INFINITY = 1_000_000_000_000_000_019_884_624_838_656  # transformers' "no limit" marker
_MIN_SHARED_PREFIX = 16  # shortest common token prefix that makes contexts one run
_MIN_PREFIX_SAVING = 512  # tokens a run's shared prefix must save to get a forward pass of its own
# Tokens per packed row: short enough that its (row x row) attention, mostly masked, stays a minor
# cost. Rows are batched, so a forward pass still multiplies large matrices: few large passes beat
# many small ones on a CPU, where every operator pays a thread-synchronisation toll.
_ROW_TOKENS = 384
_FORWARD_TOKENS = 4096

Request = tuple[str, str]
Result = tuple[float, bool]


@dataclass(frozen=True, slots=True)
class EncodedRequest:
    """Token ids of one request after lm-eval's tokenisation rules and left truncation."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]
    truncated: bool = False


# ---------------------------------------------------------------------------------------------- encoding


def prefix_token_id(tokenizer: Any) -> int:
    """The token that stands in for an empty context: BOS if the tokenizer has one, else EOS."""
    for tid in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    raise TunelabError(
        "the tokenizer has neither a BOS nor an EOS token, so an empty context cannot be scored; "
        "give every request a non-empty context"
    )


def resolve_max_length(model: Any, tokenizer: Any) -> int:
    """The model's context length, looked up in the order lm-eval uses."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and int(limit) != _TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


class _Encoder:
    """Encodes strings with lm-eval's special-token rule, batching the tokenizer calls."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.prefix_id = prefix_token_id(tokenizer) if _has_prefix_token(tokenizer) else None
        self.prefix_text = tokenizer.decode(self.prefix_id) if self.prefix_id is not None else None
        self._cache: dict[tuple[str, bool | None], list[int]] = {}

    def _flag(self, text: str, add_special_tokens: bool | None) -> bool | None:
        if add_special_tokens is None and self.prefix_text is not None and text.startswith(self.prefix_text):
            return False
        return add_special_tokens

    def warm(self, texts: Sequence[str], add_special_tokens: bool | None = None) -> None:
        """Encode many texts in one tokenizer call (fast tokenizers parallelise a batch)."""
        by_flag: dict[bool | None, list[str]] = {}
        for text in dict.fromkeys(texts):
            flag = self._flag(text, add_special_tokens)
            if (text, flag) not in self._cache:
                by_flag.setdefault(flag, []).append(text)
        for flag, batch in by_flag.items():
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            ids = self.tokenizer(batch, **kwargs)["input_ids"]
            self._cache.update({(t, flag): list(i) for t, i in zip(batch, ids, strict=True)})

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        flag = self._flag(text, add_special_tokens)
        key = (text, flag)
        if key not in self._cache:
            kwargs = {} if flag is None else {"add_special_tokens": flag}
            self._cache[key] = list(self.tokenizer(text, **kwargs)["input_ids"])
        return self._cache[key]


def _has_prefix_token(tokenizer: Any) -> bool:
    return getattr(tokenizer, "bos_token_id", None) is not None or (
        getattr(tokenizer, "eos_token_id", None) is not None
    )


def _split_request(encoder: _Encoder, context: str, continuation: str) -> tuple[list[int], list[int]]:
    if context == "":
        if encoder.prefix_id is None:
            prefix_token_id(encoder.tokenizer)  # raises the explanatory error
        cont = encoder.encode(continuation, add_special_tokens=False)
        if not cont:
            raise TunelabError(
                "cannot score an empty continuation (request with empty context and continuation)"
            )
        if cont[0] != encoder.prefix_id:
            return [encoder.prefix_id], cont
        return cont[:1], cont[1:]
    context, continuation = _move_spaces(context, continuation)
    whole = encoder.encode(context + continuation)
    ctx = encoder.encode(context)
    if not ctx:
        raise TunelabError(
            "a context made only of whitespace encodes to no tokens; pass an empty context (the BOS "
            "token stands in for it) or a real one"
        )
    return ctx, whole[len(ctx) :]


def encode_requests(tokenizer: Any, requests: Sequence[Request], max_length: int) -> list[EncodedRequest]:
    """Token ids of every request, with lm-eval's rules (see the module docstring)."""
    encoder = _Encoder(tokenizer)
    moved = [_move_spaces(c, x) for c, x in requests]
    encoder.warm([c for c, _ in moved if c] + [c + x for c, x in moved if c])
    out = []
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = _split_request(encoder, context, continuation)
        if not cont:
            raise TunelabError(
                f"request {i}: the continuation {continuation!r} has no tokens of its own after the "
                f"context {context[-40:]!r}; a multiple-choice option cannot be empty"
            )
        if len(cont) > max_length:
            raise TunelabError(
                f"request {i}: the continuation has {len(cont)} tokens, more than the model's maximum "
                f"length {max_length}; shorten it or use a model with a longer context"
            )
        full = (ctx + cont)[-(max_length + 1) :]
        truncated = len(full) < len(ctx) + len(cont)
        out.append(EncodedRequest(tuple(full[: len(full) - len(cont)]), tuple(cont), truncated))
    return out


def _move_spaces(context: str, continuation: str) -> tuple[str, str]:
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


# ---------------------------------------------------------------------------------------------- scoring


class _PackingMismatch(Exception):
    """The packed arithmetic disagreed with a plain forward pass: the model ignores the custom mask."""


def loglikelihood(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Request],
    batch_size: int = 32,
    *,
    share_prefix: bool = True,
    max_length: int | None = None,
    stats: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Result]:
    """(sum of continuation log-probs, is_greedy) for every (context, continuation) request, in order.

    `batch_size` is the most continuations scored in one forward pass. share_prefix=False scores
    every row in full, right padded, as lm-eval does; it is also what runs where packing cannot
    (prompt-learning adapters, attention kernels without custom masks, sliding windows shorter than
    a request, or a model whose packed result fails the built-in check against a plain pass).
    `stats`, when given, is filled with the settings and counters a result should be recorded with.
    `progress(done, total)` is called as unique requests finish.
    """
    if batch_size < 1:
        raise TunelabError(f"batch_size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    limit = max_length or resolve_max_length(model, tokenizer)
    encoded = encode_requests(tokenizer, requests, limit)
    unique = list(dict.fromkeys((e.context, e.continuation) for e in encoded))
    longest = max((len(c) + len(x) for c, x in unique), default=0)
    reason = _packing_blocker(model, longest) if share_prefix else "share_prefix=False"
    runner = _Runner(model, batch_size, progress, len(unique))
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            scored = None
            if reason is None:
                try:
                    scored = runner.score_packed(unique)
                except torch.OutOfMemoryError:
                    raise
                except _PackingMismatch as exc:
                    reason = str(exc)
                except (AttributeError, TypeError, ValueError, NotImplementedError, RuntimeError) as exc:
                    # Architectures without a standard KV cache or 4D masks (state-space models, ...)
                    reason = f"packed scoring is not supported by this model ({type(exc).__name__}: {exc})"
                if scored is None:
                    runner.reset()
            if scored is None:
                scored = runner.score_full(unique)
    finally:
        if was_training:
            model.train()
    if stats is not None:
        stats.update(
            mode="packed" if reason is None else "full-rows",
            fallback_reason=reason,
            batch_size=batch_size,
            padding_side="none (packed rows)" if reason is None else "right",
            max_length=limit,
            prefix_token_id=prefix_token_id(tokenizer) if _has_prefix_token(tokenizer) else None,
            requests=len(requests),
            unique_requests=len(unique),
            contexts=len({c for c, _ in unique}),
            truncated_requests=sum(e.truncated for e in encoded),
            forward_calls=runner.forward_calls,
            tokens_forwarded=runner.tokens_forwarded,
            tokens_full_rows=sum(len(c) + len(x) - 1 for c, x in unique),
            wall_s=round(time.perf_counter() - start, 3),
        )
    return [scored[(e.context, e.continuation)] for e in encoded]


def _config(model: Any) -> Any:
    config = getattr(model, "config", None)
    return getattr(config, "text_config", None) or config


def _packing_blocker(model: Any, longest: int) -> str | None:
    """Why packed scoring cannot run on this model (None when it can)."""
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning adapter: its virtual tokens come before every row"
    config = _config(model)
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if attn not in ("sdpa", "eager"):
        return f"attention implementation '{attn}' takes no custom 4D mask"
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and window > 0 and longest > window:
        return f"a request ({longest} tokens) is longer than the sliding window ({window})"
    return None


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """Where inputs go, and the dtype activations (and so the attention mask) are computed in."""
    param = next(model.parameters())
    device = getattr(model, "device", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    # 4-bit layers store uint8 weights; the embedding keeps the compute dtype.
    dtype = weight.dtype if weight is not None and weight.is_floating_point() else torch.float32
    return (device if isinstance(device, torch.device) else param.device), dtype


def _lcp(a: tuple[int, ...], b: tuple[int, ...], upto: int) -> int:
    n = min(upto, len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def plan_prefix_runs(contexts: Sequence[tuple[int, ...]], min_share: int = _MIN_SHARED_PREFIX):
    """Group contexts into runs that share a token prefix worth caching: [(prefix_len, contexts)].

    Sorting puts contexts with a common start next to each other; a run grows while the prefix it
    shares stays at least `min_share` tokens, and always leaves every context one token of its own
    (that token's logits score the first continuation token). prefix_len 0 means no shared pass.
    """
    runs: list[tuple[int, list[tuple[int, ...]]]] = []
    current: list[tuple[int, ...]] = []
    shared = 0
    for ctx in sorted(set(contexts)):
        if current:
            common = min(_lcp(current[0], ctx, shared), len(ctx) - 1)
            if common >= min_share:
                current.append(ctx)
                shared = common
                continue
            runs.append((shared if len(current) > 1 else 0, current))
        current, shared = [ctx], len(ctx) - 1
    if current:
        runs.append((shared if len(current) > 1 else 0, current))
    return runs


Entry = tuple[tuple[int, ...], list[tuple[int, ...]]]  # (context, continuations scored with it)


class _Runner:
    """Runs the forward passes and keeps the counters a result is recorded with."""

    def __init__(self, model: Any, batch_size: int, progress: Callable[[int, int], None] | None, total: int):
        self.model = model
        self.batch_size = batch_size
        self.device, self.dtype = _model_device_dtype(model)
        self.keep_ok = accepts_logits_to_keep(model)
        vocab = getattr(_config(model), "vocab_size", None) or 50_000
        self.row_tokens = _ROW_TOKENS
        # A pass keeps up to (tokens x vocab) float logits: about 512 MB at most.
        self.forward_tokens = max(_ROW_TOKENS, min(_FORWARD_TOKENS, (1 << 27) // vocab))
        self.progress = progress
        self.total = total
        self.reset()

    def reset(self) -> None:
        self.forward_calls = 0
        self.tokens_forwarded = 0
        self.done = 0
        self.checked = False

    def _forward(self, ids: torch.Tensor, *, keep: int | torch.Tensor = 0, **kwargs: Any):
        args: dict[str, Any] = {"input_ids": ids.to(self.device), **kwargs}
        if self.keep_ok and (isinstance(keep, torch.Tensor) or keep):
            args["logits_to_keep"] = keep.to(self.device) if isinstance(keep, torch.Tensor) else keep
        out = self.model(**args)
        self.forward_calls += 1
        self.tokens_forwarded += ids.numel()
        logits = out.logits
        if not self.keep_ok and isinstance(keep, torch.Tensor):
            logits = logits[:, keep.to(logits.device)]
        elif not self.keep_ok and keep:
            logits = logits[:, -keep:]
        return logits, getattr(out, "past_key_values", None)

    def _tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)

    # -- packed scoring -------------------------------------------------------------------------------

    def score_packed(self, unique: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> dict:
        """Contexts sharing a long prefix reuse its KV cache; everything is packed into rows where each
        context is followed by all its continuations, kept apart by a tree-shaped attention mask."""
        by_context: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for ctx, cont in unique:
            by_context.setdefault(ctx, []).append(cont)
        # A shared prefix costs a pass of its own and splits the packing: only worth it when it saves
        # enough tokens (TruthfulQA's primer: ~170 tokens x every question; not two HellaSwag
        # items cut from the same video).
        runs = [
            (s, c) if (len(c) - 1) * s >= _MIN_PREFIX_SAVING else (0, c)
            for s, c in plan_prefix_runs(by_context)
        ]
        loose = [ctx for shared, contexts in runs if not shared for ctx in contexts]
        results: dict = {}
        for shared, contexts in [(s, c) for s, c in runs if s] + [(0, loose)]:
            prefix_cache = None
            if shared:
                _, prefix_cache = self._forward(torch.tensor([contexts[0][:shared]]), keep=1, use_cache=True)
                if prefix_cache is None:
                    raise _PackingMismatch("the model returned no KV cache for the shared prefix")
            for rows in self._plan(contexts, by_context, shared):
                cache = None
                if prefix_cache is not None:
                    cache = copy.deepcopy(prefix_cache)
                    if len(rows) > 1:
                        cache.batch_repeat_interleave(len(rows))
                scored = self._score_rows(rows, shared, cache)
                self._check(rows, scored)
                results.update(scored)
                self._tick(len(scored))
        return results

    def _plan(
        self, contexts: list[tuple[int, ...]], by_context: dict, shared: int
    ) -> list[list[list[Entry]]]:
        """Forward passes -> rows -> entries. A pass holds at most batch_size continuations and about
        forward_tokens tokens, split into rows of about row_tokens (short rows keep the masked
        attention cheap) balanced in length, so that little of the pass is padding."""
        entries: list[Entry] = []
        for ctx in contexts:
            conts = by_context[ctx]
            # A context with more continuations than a pass holds is repeated, once per chunk.
            entries += [(ctx, conts[i : i + self.batch_size]) for i in range(0, len(conts), self.batch_size)]
        passes: list[list[tuple[int, Entry]]] = [[]]
        n_conts = n_tokens = 0
        for ctx, conts in entries:
            size = len(ctx) - shared + sum(len(c) - 1 for c in conts)
            if passes[-1] and (
                n_conts + len(conts) > self.batch_size or n_tokens + size > self.forward_tokens
            ):
                passes.append([])
                n_conts = n_tokens = 0
            passes[-1].append((size, (ctx, conts)))
            n_conts += len(conts)
            n_tokens += size
        return [self._balance(p) for p in passes if p]

    def _balance(self, sized: list[tuple[int, Entry]]) -> list[list[Entry]]:
        """Longest entry first into the shortest row."""
        total = sum(size for size, _ in sized)
        n_rows = max(1, -(-total // self.row_tokens))
        rows: list[list[Entry]] = [[] for _ in range(n_rows)]
        lengths = [0] * n_rows
        for size, entry in sorted(sized, key=lambda e: -e[0]):
            shortest = lengths.index(min(lengths))
            rows[shortest].append(entry)
            lengths[shortest] += size
        return [row for row in rows if row]

    def _score_rows(self, rows: list[list[Entry]], shared: int, cache: Any) -> dict:
        built = [self._layout(row, shared) for row in rows]
        width = max(len(ids) for ids, *_ in built)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.full(
            (len(rows), 1, width, shared + width), torch.finfo(self.dtype).min, dtype=self.dtype
        )
        for r, (row_ids, row_pos, allowed, _) in enumerate(built):
            q = len(row_ids)
            ids[r, :q] = torch.tensor(row_ids, dtype=torch.long)
            positions[r, :q] = torch.tensor(row_pos, dtype=torch.long)
            mask[r, 0, :q, :shared] = 0
            mask[r, 0, :q, shared : shared + q].masked_fill_(allowed, 0)
            # Padding queries see only themselves: a fully masked row would turn into NaN.
            pad = torch.arange(q, width)
            mask[r, 0, pad, shared + pad] = 0
        keep = sorted({p for *_, scored_at in built for *_, where in scored_at for p in where})
        logits, _ = self._forward(
            ids,
            position_ids=positions.to(self.device),
            attention_mask=mask.to(self.device),
            past_key_values=cache,
            use_cache=cache is not None,
            keep=torch.tensor(keep, dtype=torch.long),
        )
        index = {p: i for i, p in enumerate(keep)}
        out: dict = {}
        for r, (*_, scored_at) in enumerate(built):
            out.update(self._gather(logits[r], [(c, x, [index[p] for p in w]) for c, x, w in scored_at]))
        return out

    @staticmethod
    def _layout(row: list[Entry], shared: int):
        """Token ids, position ids, the (q, q) tree of what may attend to what, and where each
        continuation's tokens are predicted."""
        ids: list[int] = []
        positions: list[int] = []
        blocks: list[tuple[int, int, int, int]] = []  # (start, end, and the context span it also sees)
        scored_at: list[tuple[tuple[int, ...], tuple[int, ...], list[int]]] = []
        for ctx, conts in row:
            ctx_start = len(ids)
            ids += ctx[shared:]
            positions += range(shared, len(ctx))
            ctx_end = len(ids)
            blocks.append((ctx_start, ctx_end, ctx_start, ctx_start))
            for cont in conts:
                start = len(ids)
                ids += cont[:-1]
                positions += range(len(ctx), len(ctx) + len(cont) - 1)
                blocks.append((start, len(ids), ctx_start, ctx_end))
                # the context's last token predicts the first continuation token
                scored_at.append((ctx, cont, [ctx_end - 1, *range(start, len(ids))]))
        allowed = torch.zeros((len(ids), len(ids)), dtype=torch.bool)
        for start, end, ctx_start, ctx_end in blocks:
            n = end - start
            if n:
                allowed[start:end, start:end] = torch.ones((n, n), dtype=torch.bool).tril()
                allowed[start:end, ctx_start:ctx_end] = True
        return ids, positions, allowed, scored_at

    def _gather(self, logits: torch.Tensor, scored_at) -> dict:
        """Sum log-probs at the kept positions; logits is (kept positions, vocab)."""
        width = max(len(w) for *_, w in scored_at)
        where = torch.zeros((len(scored_at), width), dtype=torch.long)
        targets, valid = _targets([cont for _, cont, _ in scored_at], width)
        for i, (*_, w) in enumerate(scored_at):
            where[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        where, targets, valid = where.to(logits.device), targets.to(logits.device), valid.to(logits.device)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs[where, targets]
        sums = (picked * valid).sum(dim=1)
        greedy = ((logits.argmax(dim=-1)[where] == targets) | ~valid).all(dim=1)
        return {(c, x): (float(sums[i]), bool(greedy[i])) for i, (c, x, _) in enumerate(scored_at)}

    def _check(self, rows: list[list[Entry]], scored: dict) -> None:
        """Once per call: the last continuation of the last row of the first pass that packs more than
        one continuation (so its positions, mask and padding differ from a plain row) must match a
        plain forward pass."""
        if self.checked or sum(len(conts) for row in rows for _, conts in row) < 2:
            return
        self.checked = True
        ctx, conts = rows[-1][-1]
        key = (ctx, conts[-1])
        (plain,) = self._score_full_batch([key]).values()
        tolerance = 1e-3 + 1e-4 * abs(plain[0]) if self.dtype == torch.float32 else 0.1 + 0.02 * abs(plain[0])
        if abs(plain[0] - scored[key][0]) > tolerance:
            raise _PackingMismatch(
                f"packed scoring disagreed with a plain forward pass ({scored[key][0]:.4f} vs {plain[0]:.4f}); "
                "this model does not honour custom attention masks or position ids"
            )

    # -- full-row scoring (lm-eval's arithmetic) -----------------------------------------------------

    def score_full(self, unique: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> dict:
        # Longest first, as lm-eval orders them, so a batch holds rows of similar length.
        order = sorted(unique, key=lambda r: (-(len(r[0]) + len(r[1])), r[0] + r[1]))
        results: dict = {}
        for i in range(0, len(order), self.batch_size):
            batch = order[i : i + self.batch_size]
            results.update(self._score_full_batch(batch))
            self._tick(len(batch))
        return results

    def _score_full_batch(self, batch: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> dict:
        rows = [list(ctx + cont)[:-1] for ctx, cont in batch]
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        # Scored positions of a row: the last len(cont) positions of its input.
        starts = [len(r) - len(cont) for r, (_, cont) in zip(rows, batch, strict=True)]
        keep = width - min(starts)
        # No attention mask, as lm-eval: padding is on the right, and causal attention never lets a
        # real token see the padding after it.
        logits, _ = self._forward(ids, keep=keep)
        offset = width - keep
        out = {}
        for b, ((ctx, cont), start) in enumerate(zip(batch, starts, strict=True)):
            span = logits[b, start - offset : start - offset + len(cont)]
            out.update(self._gather(span, [(ctx, cont, list(range(len(cont))))]))
        return out


def _targets(conts, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded target ids and their validity mask."""
    targets = torch.zeros((len(conts), width), dtype=torch.long)
    valid = torch.zeros((len(conts), width), dtype=torch.bool)
    for i, cont in enumerate(conts):
        targets[i, : len(cont)] = torch.tensor(cont, dtype=torch.long)
        valid[i, : len(cont)] = True
    return targets, valid
