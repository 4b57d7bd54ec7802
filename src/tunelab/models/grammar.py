"""Grammar-constrained decoding: the glue between tunelab's Generator and llguidance.

    grammar = JsonGrammar(tokenizer, vocab_size=model_logits_width, stop_ids={eos, end_of_turn})
    row = grammar.matcher(json_schema)        # one per generated row
    grammar.mask(logits, [row, None, ...])    # -inf where a row's grammar forbids the token (in place)
    row.advance(token)                        # after the token is picked; row.done once the JSON is complete

A row decoded this way can only write text its JSON schema allows: at each step the logits of every
token that would break the schema are set to -inf before greedy or sampled picking. JSON is written
compactly (no whitespace between tokens of the JSON), so a schema's length bounds (maxLength,
maxItems) bound the reply. A row whose JSON is complete is `done`: the engine ends it without spending a
forward pass on the end-of-sequence token.

Why llguidance (measured on this project's 2-core CPU, tunelab's QA reply schema, uniform random walks
through the allowed tokens): mask computation about 0.2 ms per step with SmolLM2's 49k BPE vocabulary
and 0.6 ms with Gemma 3's 262k vocabulary, the tokenizer prepared in 0.4 s / 3 s and each schema
compiled on first use in about 1 ms; the wheel is 3 MB with no dependencies. xgrammar was as fast per
step but compiles each schema slower and pulls in triton and apache-tvm-ffi; outlines-core spent 3 s
(SmolLM2) to 25 s (Gemma 3) building the index of each new schema, and tunelab's schemas change per call
(item counts, label sets); lm-format-enforcer does not import with transformers 5 and wrote invalid JSON
in the same walk.

A row may instead be constrained to a `Choice`, a fixed set of strings (a label set): its reply is
exactly one of them, nothing before or after. That is a Lark grammar of the options as literal
alternatives, not the JSON schema `{"enum": [...]}`, whose reply would be a quoted JSON string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import TunelabError

_BITS = None  # torch.arange(32) as int32, made on first use


@dataclass(frozen=True)
class Choice:
    """A reply that is exactly one of `options` (e.g. a label set), decoded under their alternation."""

    options: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.options or any(not isinstance(o, str) or not o for o in self.options):
            raise TunelabError(f"a choice needs at least one non-empty option, got {list(self.options)}")

    def lark(self) -> str:
        # a JSON string is a valid Lark literal: quotes, backslashes and newlines in a label stay literal
        return "start: " + " | ".join(json.dumps(o, ensure_ascii=False) for o in dict.fromkeys(self.options))


class RowGrammar:
    """One row's grammar state: what it may write next, and whether its JSON is complete."""

    def __init__(self, matcher: Any):
        self._m = matcher

    def advance(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            # the mask forbade this token, so this is a bug, not the model's fault
            raise TunelabError(f"constrained decoding: token {token} was picked but the grammar rejects it "
                               f"({self._m.get_error()})")

    @property
    def done(self) -> bool:
        """The JSON is complete and nothing more may follow it."""
        return bool(self._m.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self._m.is_accepting())


class JsonGrammar:
    """JSON-schema grammars for one tokenizer; preparing the tokenizer for llguidance costs about a
    second, so one instance serves every call of a Generator."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]):
        try:
            import llguidance
            import llguidance.hf
        except ImportError:  # pragma: no cover - a dependency of tunelab
            raise TunelabError("constrained decoding needs the llguidance package: pip install llguidance") from None
        self._ll = llguidance
        self.stop_ids = sorted(int(t) for t in stop_ids)
        self.vocab_size = max(int(vocab_size), len(tokenizer))
        try:
            self._tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size, eos_token=self.stop_ids)
        except ValueError as exc:
            raise TunelabError(f"constrained decoding needs a fast (Rust) tokenizer: {exc}") from None
        self._words = (self.vocab_size + 31) // 32  # int32 words of one row's bitmask
        self._executor = llguidance.LLExecutor()
        self._compiled: dict[str, str] = {}

    def matcher(self, schema: dict[str, Any] | Choice) -> RowGrammar:
        """A fresh row state for a JSON `schema` or a `Choice`; a TunelabError says what is wrong with a
        schema it cannot use."""
        what = "choice" if isinstance(schema, Choice) else "JSON schema"
        key = f"choice:{json.dumps(schema.options)}" if isinstance(schema, Choice) else json.dumps(schema, sort_keys=True)
        grammar = self._compiled.get(key)
        if grammar is None:
            try:
                if isinstance(schema, Choice):
                    grammar = self._ll.LLMatcher.grammar_from_lark(schema.lark())
                else:
                    # compact JSON: whitespace between tokens would let a small model pad a reply forever
                    grammar = self._ll.LLMatcher.grammar_from_json_schema(
                        schema, defaults={"whitespace_flexible": False})
            except ValueError as exc:
                raise TunelabError(f"cannot decode under this {what}: {exc}") from None
            self._compiled[key] = grammar
        try:
            m = self._ll.LLMatcher(self._tok, grammar, log_level=0)
        except ValueError as exc:
            raise TunelabError(f"cannot decode under this {what}: {exc}") from None
        if m.is_error():
            raise TunelabError(f"cannot decode under this {what}: {m.get_error()}")
        return RowGrammar(m)

    def mask(self, logits: torch.Tensor, rows: Sequence[RowGrammar | None]) -> torch.Tensor:
        """`logits` (one row per entry of `rows`) with every token a row's grammar forbids set to -inf,
        in place; rows without a grammar are left alone."""
        constrained = [(r._m, i) for i, r in enumerate(rows) if r is not None]
        if not constrained:
            return logits
        bitmask = torch.zeros((len(rows), self._words), dtype=torch.int32)
        self._executor.unsafe_compute_mask_ptr(constrained, bitmask.data_ptr(), self._words * 4, len(rows))
        allowed = _unpack(bitmask)
        width = logits.shape[-1]
        if allowed.shape[1] < width:
            allowed = torch.cat([allowed, allowed.new_zeros((len(rows), width - allowed.shape[1]))], dim=1)
        allowed = allowed[:, :width]
        free = [i for i, r in enumerate(rows) if r is None]
        if free:
            allowed[free] = True
        # llguidance marks one end-of-sequence token; any of the model's stop tokens may end a complete row
        for i, r in enumerate(rows):
            if r is not None and r.accepting:
                allowed[i, [t for t in self.stop_ids if t < width]] = True
        stuck = (~allowed.any(dim=1)).nonzero().flatten().tolist()
        if stuck:
            errors = "; ".join(rows[i]._m.get_error() or "no token allowed" for i in stuck)  # type: ignore[union-attr]
            raise TunelabError(f"constrained decoding: the grammar allows no next token ({errors})")
        logits.masked_fill_(~allowed.to(logits.device), float("-inf"))
        return logits


def _unpack(bitmask: torch.Tensor) -> torch.Tensor:
    """(rows, words) int32 bitmask, bit j of word w for token 32*w + j -> (rows, 32*words) bool."""
    global _BITS
    if _BITS is None:
        _BITS = torch.arange(32, dtype=torch.int32)
    return ((bitmask[:, :, None] >> _BITS) & 1).bool().reshape(bitmask.shape[0], -1)
