"""Render records into token ids and labels for a model: the chat template and the completion-only loss mask.

Two failures users of fine-tuning tools hit most live here, and both are made loud instead of silent:

- A loss mask that covers nothing (a template that drops assistant content, an answer truncated away)
  or everything. Chat records are rendered with the model's own chat template ONCE, tokenized with
  character offsets, and exactly the tokens inside each assistant turn (its content plus the
  end-of-turn marker that closes it) get labels. The spans are found by rendering prefixes of the
  conversation (messages[:i] with the generation prompt, messages[:i+1] without) and diffing, so any
  template works, not just ChatML; a rendered chat example with no loss token raises.
- A model that never stops after export because training and serving disagree on how a turn ends. The
  end-of-turn token (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>` ...) must be in the loss; a template
  that closes assistant turns without a special token raises; `end_of_turn_token` names the token
  generation must stop on, and the stats warn when it is not the tokenizer's eos_token.

Token ids match serving: the template's text is tokenized without the tokenizer's automatic specials,
and the tokenizer's default BOS is prepended only when the template did not already emit it (so there is
never a double BOS, and a model pretrained with BOS always gets one). `render_prompt` builds generation
prompts with the same rule.

Labels follow the Hugging Face causal-LM convention: labels[i] is the target at position i and -100 is
ignored; position 0 is never predicted, so its label is always -100 and `n_loss_tokens` counts exactly
the tokens the loss is computed on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import TunelabError
from .records import Record

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "last", "all")

Messages = list[dict[str, Any]]
Span = tuple[int, int]


@dataclass(slots=True)
class Rendered:
    """One training example: ids, labels (-100 = not in the loss) and what truncation did to it."""

    input_ids: list[int]
    labels: list[int]
    n_loss_tokens: int
    truncated: bool
    full_length: int = 0  # tokens before truncation
    full_loss_tokens: int = 0  # loss tokens before truncation
    pieces: list[str] | None = None  # token texts, kept only for previews

    @property
    def answer_truncated_away(self) -> bool:
        """True when truncation cut off every token the loss was computed on."""
        return self.truncated and self.n_loss_tokens == 0 and self.full_loss_tokens > 0


@dataclass(slots=True)
class _Tokens:
    ids: list[int]
    in_loss: list[bool]
    pieces: list[str]
    end_of_turn: str | None = None


# -- tokenizer facts --------------------------------------------------------------------------------


def require_chat_template(tokenizer) -> None:
    """Raise, saying how to fix it, when the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or "this model"
        raise TunelabError(
            f"the tokenizer of {name} has no chat template, so chat, label and preference records cannot be "
            "rendered. Pick a template for the model in the experiment config (for example chatml), set "
            "tokenizer.chat_template to a Jinja template, or train on text records (causal objective)."
        )


def _special_strings(tokenizer) -> list[str]:
    """Texts of every special token, longest first so '<|im_end|>' wins over a shorter prefix."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values():
        if getattr(added, "special", False):
            found.add(str(added.content))
    return sorted((s for s in found if s), key=len, reverse=True)


def _default_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts in front of text by itself (usually [bos] or nothing)."""
    probe = "a b"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _encode(tokenizer, text: str) -> tuple[list[int], list[Span]]:
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as exc:  # slow (Python) tokenizers have no offsets
        raise TunelabError(
            "rendering needs a fast tokenizer (one backed by the `tokenizers` library) for character "
            "offsets; load the model's tokenizer.json instead of a slow tokenizer"
        ) from exc
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _pieces(text: str, offsets: Sequence[Span]) -> list[str]:
    """Each token's text; bytes of one character split over several tokens are shown once."""
    out: list[str] = []
    seen = 0
    for start, end in offsets:
        out.append(text[max(start, seen) : end] if end > seen else "")
        seen = max(seen, end)
    return out


def _with_prefix(tokenizer, tokens: _Tokens) -> _Tokens:
    """Prepend the tokenizer's default BOS unless the text already starts with it (no double BOS)."""
    prefix = _default_prefix(tokenizer)
    if not prefix or tokens.ids[: len(prefix)] == prefix:
        return tokens
    return _Tokens(
        ids=prefix + tokens.ids,
        in_loss=[False] * len(prefix) + tokens.in_loss,
        pieces=list(tokenizer.convert_ids_to_tokens(prefix)) + tokens.pieces,
        end_of_turn=tokens.end_of_turn,
    )


# -- chat templates ---------------------------------------------------------------------------------


def _template(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # Jinja raise_exception(): role order and similar rules of the template
        roles = ", ".join(m.get("role", "?") for m in messages)
        raise TunelabError(f"the chat template rejected a conversation with roles [{roles}]: {exc}") from exc
    if not isinstance(text, str):
        raise TunelabError("the chat template did not render a string; is it a single-conversation template?")
    return text


def _turn_start(tokenizer, messages: Messages, i: int, full: str, cursor: int) -> int:
    """Where assistant turn i's text begins in `full`: right after the generation prompt."""
    try:
        prompt = _template(tokenizer, messages[:i], add_generation_prompt=True) if i else None
    except TunelabError:
        prompt = None  # e.g. a template that refuses an empty or system-only conversation
    if prompt is not None and full.startswith(prompt) and len(prompt) >= cursor:
        return len(prompt)
    # The template opens assistant turns differently from its generation prompt: find the content.
    content = str(messages[i].get("content") or "").strip()
    pos = full.find(content, cursor) if content else -1
    if pos < 0:
        raise TunelabError(
            f"could not locate assistant turn {i + 1} in the rendered conversation: the chat template "
            "neither starts it with its generation prompt nor renders its content verbatim"
        )
    return pos


def _turn_end(tokenizer, messages: Messages, i: int, full: str, start: int, specials: list[str]) -> Span:
    """End of assistant turn i (after its end-of-turn token, before trailing whitespace) and that token."""
    upto = _template(tokenizer, messages[: i + 1])
    if full.startswith(upto) and len(upto) > start:
        stop = len(upto.rstrip())
    else:
        # Later turns change how this one renders (templates that rewrite history): take the content,
        # then the special token that follows it.
        content = str(messages[i].get("content") or "").strip()
        pos = full.find(content, start)
        if pos < 0:
            raise TunelabError(
                f"assistant turn {i + 1} is rendered differently inside the whole conversation than on its "
                "own, and its content was not found; the chat template rewrites history in a way tunelab "
                "cannot mask"
            )
        stop = pos + len(content)
        rest = full[stop:]
        gap = len(rest) - len(rest.lstrip())
        closing = next((s for s in specials if rest[gap:].startswith(s)), None)
        stop = stop + gap + len(closing) if closing else stop
    closing = next((s for s in specials if full[start:stop].endswith(s)), None)
    if closing is None:
        raise TunelabError(
            f"the chat template closes assistant turn {i + 1} with no special token (it ends with "
            f"{full[max(start, stop - 20) : stop]!r}), so a model trained on it never learns to stop. "
            "Use a template that ends assistant turns with an end-of-turn or eos token."
        )
    return stop, closing


def _assistant_spans(tokenizer, messages: Messages, full: str) -> tuple[list[Span], str | None]:
    """Character spans of every assistant turn (content + end-of-turn token) in `full`."""
    specials = _special_strings(tokenizer)
    spans: list[Span] = []
    closing: str | None = None
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = _turn_start(tokenizer, messages, i, full, cursor)
        stop, closing = _turn_end(tokenizer, messages, i, full, start, specials)
        body = full[start:stop]
        for s in specials:
            body = body.replace(s, "")
        if str(message.get("content") or "").strip() and not body.strip():
            raise TunelabError(
                f"the chat template drops the content of assistant turn {i + 1}: only template tokens "
                f"({full[start:stop]!r}) would be in the loss. Fix the template or pick another one."
            )
        spans.append((start, stop))
        cursor = stop
    return spans, closing


def _mask(offsets: Sequence[Span], spans: Sequence[Span]) -> list[bool]:
    """A token is in the loss when its characters overlap a span (a token straddling the start of the
    content carries the content's first characters, so the model must learn to produce it)."""
    out = []
    for start, end in offsets:
        end = max(end, start + 1)  # zero-width offsets (trimmed whitespace) still sit at a position
        out.append(any(start < s_end and end > s_start for s_start, s_end in spans))
    return out


def _render_chat(tokenizer, messages: Messages, train_on: str) -> _Tokens:
    if train_on not in TRAIN_ON:
        raise TunelabError(f"train_on must be one of {', '.join(TRAIN_ON)}, not {train_on!r}")
    require_chat_template(tokenizer)
    full = _template(tokenizer, messages)
    ids, offsets = _encode(tokenizer, full)
    spans, closing = _assistant_spans(tokenizer, messages, full)
    if train_on == "all":
        in_loss = [True] * len(ids)
    else:
        chosen = spans[-1:] if train_on == "last" else spans
        in_loss = _mask(offsets, chosen)
        if not any(in_loss):
            raise TunelabError(
                "a chat record rendered with zero loss tokens: "
                + ("it has no assistant turn" if not spans else "the template leaves its assistant turns out")
                + "; every chat record must end with an assistant reply"
            )
    return _with_prefix(tokenizer, _Tokens(ids, in_loss, _pieces(full, offsets), closing))


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise TunelabError(
            "the tokenizer has no eos_token, so text records cannot end with one and the model would never "
            "learn where a document stops; set tokenizer.eos_token"
        )
    return int(eos)


def _render_text(tokenizer, text: str) -> _Tokens:
    ids, offsets = _encode(tokenizer, text)
    pieces = _pieces(text, offsets)
    eos = _eos_id(tokenizer)
    if not ids or ids[-1] != eos:
        ids.append(eos)
        pieces.append(str(tokenizer.convert_ids_to_tokens(eos)))
    return _with_prefix(tokenizer, _Tokens(ids, [True] * len(ids), pieces, tokenizer.eos_token))


def _label_messages(record: Record) -> Messages:
    return [
        {"role": "user", "content": record.text or ""},
        {"role": "assistant", "content": record.label or ""},
    ]


def _record_tokens(record: Record, tokenizer, train_on: str) -> _Tokens:
    if record.kind == "chat":
        return _render_chat(tokenizer, list(record.messages or []), train_on)
    if record.kind == "text":
        return _render_text(tokenizer, record.text or "")
    if record.kind == "label":
        return _render_chat(tokenizer, _label_messages(record), train_on)
    if record.kind == "preference":
        raise TunelabError("preference records render as a pair: use render_preference (a DPO objective)")
    raise TunelabError(f"unknown record kind {record.kind!r}")


# -- public API -------------------------------------------------------------------------------------


def _finish(tokens: _Tokens, max_length: int | None, keep_pieces: bool) -> Rendered:
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(tokens.ids, tokens.in_loss, strict=True)]
    if labels:
        labels[0] = IGNORE_INDEX  # position 0 has no previous token to predict it from
    full_loss = sum(label != IGNORE_INDEX for label in labels)
    full_length = len(tokens.ids)
    if max_length is not None and max_length < 1:
        raise TunelabError(f"max_length must be at least 1, not {max_length}")
    cut = full_length if max_length is None else min(full_length, max_length)
    kept = labels[:cut]
    return Rendered(
        input_ids=tokens.ids[:cut],
        labels=kept,
        n_loss_tokens=sum(label != IGNORE_INDEX for label in kept),
        truncated=cut < full_length,
        full_length=full_length,
        full_loss_tokens=full_loss,
        pieces=tokens.pieces[:cut] if keep_pieces else None,
    )


def render_record(record: Record, tokenizer, max_length: int, *, train_on: str = "assistant") -> Rendered:
    """Token ids and labels of one chat, text or label record, right-truncated to max_length.

    train_on (chat and label records): "assistant" puts every assistant turn in the loss, "last" only
    the final one, "all" every token. Text records are always all in the loss and end with eos.
    """
    return _finish(_record_tokens(record, tokenizer, train_on), max_length, keep_pieces=False)


def render_preference(record: Record, tokenizer, max_length: int) -> tuple[Rendered, Rendered]:
    """(prompt + chosen, prompt + rejected) for preference tuning, the loss on the reply only."""
    if record.kind != "preference":
        raise TunelabError(f"render_preference needs a preference record, not a {record.kind} record")
    prompt = list(record.messages or [])
    pair = []
    for reply in (record.chosen, record.rejected):
        messages = prompt + [{"role": "assistant", "content": reply or ""}]
        pair.append(_finish(_render_chat(tokenizer, messages, "last"), max_length, keep_pieces=False))
    return pair[0], pair[1]


def render_prompt(messages: Messages, tokenizer) -> list[int]:
    """Ids of a generation prompt, built exactly as training renders conversations (same BOS rule),
    so serving and evaluation feed the model what it was trained on."""
    require_chat_template(tokenizer)
    text = _template(tokenizer, messages, add_generation_prompt=True)
    ids, offsets = _encode(tokenizer, text)
    return _with_prefix(tokenizer, _Tokens(ids, [False] * len(ids), _pieces(text, offsets))).ids


def end_of_turn_token(tokenizer) -> str | None:
    """The special token that closes an assistant turn in the chat template (what generation must stop
    on), or the eos_token for a tokenizer without a template."""
    if not getattr(tokenizer, "chat_template", None):
        return getattr(tokenizer, "eos_token", None)
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    return _render_chat(tokenizer, probe, "assistant").end_of_turn


def loss_mask_preview(
    record: Record, tokenizer, *, max_length: int | None = None, train_on: str = "assistant", reply: str = "chosen"
) -> list[tuple[str, bool]]:
    """(token text, in loss) for every token of a rendered record; preference records show the reply
    named by `reply` (chosen or rejected). Joining the texts gives back the rendered string (plus any
    BOS/EOS added)."""
    if record.kind == "preference":
        answer = record.chosen if reply == "chosen" else record.rejected
        messages = list(record.messages or []) + [{"role": "assistant", "content": answer or ""}]
        tokens = _render_chat(tokenizer, messages, "last")
    else:
        tokens = _record_tokens(record, tokenizer, train_on)
    rendered = _finish(tokens, max_length, keep_pieces=True)
    return [
        (p, label != IGNORE_INDEX) for p, label in zip(rendered.pieces or [], rendered.labels, strict=True)
    ]


def _where(record: Record, index: int) -> str:
    meta = record.meta or {}
    file = meta.get("file") or meta.get("source_file")
    line = meta.get("line") or meta.get("source_line")
    origin = f" ({file}{f':{line}' if line else ''})" if file else ""
    return f"record {index + 1}{origin}"


def eos_warnings(tokenizer, end_of_turn: str | None) -> list[str]:
    """Say so when generation would not stop where training taught the model to stop."""
    eos = getattr(tokenizer, "eos_token", None)
    if end_of_turn and eos and end_of_turn != eos:
        return [
            f"the chat template ends assistant turns with {end_of_turn} but the tokenizer's eos_token is "
            f"{eos}: generation and export must stop on {end_of_turn} too (add its id to "
            "generation_config.eos_token_id), or the tuned model will not stop"
        ]
    return []


def render_records(
    records: Iterable[Record], tokenizer, max_length: int, *, train_on: str = "assistant"
) -> tuple[list[Rendered], dict[str, Any]]:
    """Render many records; stats count truncation and loss tokens so a bad mask cannot go unnoticed.

    A record that cannot be rendered (zero loss tokens, a template error) raises, naming the record.
    """
    rendered: list[Rendered] = []
    closings: set[str] = set()
    for index, record in enumerate(records):
        try:
            tokens = _record_tokens(record, tokenizer, train_on)
        except TunelabError as exc:
            raise TunelabError(f"{_where(record, index)}: {exc}") from exc
        if record.kind != "text" and tokens.end_of_turn:
            closings.add(tokens.end_of_turn)
        rendered.append(_finish(tokens, max_length, keep_pieces=False))
    return rendered, render_stats(rendered, max_length, train_on, tokenizer, sorted(closings))


def render_stats(
    rendered: Sequence[Rendered],
    max_length: int,
    train_on: str,
    tokenizer=None,
    end_of_turn: Sequence[str] = (),
) -> dict[str, Any]:
    """JSON-ready counts: records, truncation, loss tokens (after truncation), zero-loss records."""
    losses = [r.n_loss_tokens for r in rendered]
    warnings: list[str] = []
    for token in end_of_turn:
        warnings += eos_warnings(tokenizer, token) if tokenizer is not None else []
    return {
        "count": len(rendered),
        "max_length": max_length,
        "train_on": train_on,
        "truncated": sum(r.truncated for r in rendered),
        "answer_truncated_away": sum(r.answer_truncated_away for r in rendered),
        "zero_loss_records": sum(n == 0 for n in losses),
        "tokens": sum(len(r.input_ids) for r in rendered),
        "loss_tokens": sum(losses),
        "loss_tokens_min": min(losses, default=0),
        "loss_tokens_mean": round(sum(losses) / len(losses), 2) if losses else 0.0,
        "loss_tokens_max": max(losses, default=0),
        "end_of_turn": list(end_of_turn),
        "warnings": warnings,
    }
