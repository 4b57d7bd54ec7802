"""A Hugging Face tokenizer as llama.cpp's GGUF tokenizer metadata (tokenizer.ggml.*).

Two shapes, picked from tokenizer.json itself, never from the model's name:
- byte-level BPE (SmolLM2, GPT-2, Llama 3): `tokenizer.ggml.model = "gpt2"`, the tokens as the vocabulary
  spells them, the merges, and `tokenizer.ggml.pre` naming the pre-tokenizer llama.cpp must split text
  with. The name is read off the tokenizer's own pre-tokenizer: a plain GPT-2 ByteLevel regex is
  "gpt-2", digits split one by one before it is "smollm", Llama 3's split regex is "llama-bpe". A
  pre-tokenizer this module does not recognise is an error, since a wrong name makes llama.cpp cut text
  into different tokens than training did.
- sentencepiece-style BPE with byte fallback (Gemma, Llama 2): `tokenizer.ggml.model = "llama"`, the
  tokens with `<0xNN>` byte pieces, and scores. llama.cpp merges the adjacent pair whose joined token
  scores highest, so each token's score is minus the rank of the merge that makes it: the same order
  the BPE merges are applied in.

Token types follow llama.cpp's converter: special added tokens are CONTROL, other added tokens
USER_DEFINED (spelled with real spaces), `<0xNN>` pieces BYTE, ids missing from the vocabulary UNUSED.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelabError

# gguf.TokenType values (kept here so the dataclass needs no gguf import)
NORMAL, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 3, 4, 5, 6

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass
class GgufVocab:
    """What goes under tokenizer.ggml.*: model, pre, tokens, types, scores/merges, special ids."""

    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad, eot
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False

    def token_id(self, text: str) -> int | None:
        try:
            return self.tokens.index(text)
        except ValueError:
            return None


def _pre_tokenizer_name(tok: dict[str, Any], path: Path) -> str:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer, from its tokenizer.json structure."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if tok.get("normalizer") not in (None, {}):
        raise TunelabError(f"{path}: a byte-level tokenizer with a normalizer ({tok['normalizer'].get('type')}) "
                           "has no llama.cpp pre-tokenizer this exporter knows")
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex == _LLAMA3_SPLIT:
            return "llama-bpe"
        if regex == _GPT2_SPLIT:
            return "gpt-2"
    raise TunelabError(
        f"{path}: pre-tokenizer {json.dumps(pre)[:200]} is not one this exporter can name for llama.cpp "
        "(known: GPT-2 ByteLevel, SmolLM digits + ByteLevel, Llama 3 split); a wrong name would make "
        "llama.cpp tokenize differently from training, so nothing was written")


def _merges(model: dict[str, Any]) -> list[str]:
    out = []
    for merge in model.get("merges") or []:
        if isinstance(merge, str):
            out.append(merge)
        else:
            # a space inside a pair is written as U+0120+... the way llama.cpp's converter encodes it
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in merge))
    return out


def _adds(tokenizer, token_id: int | None, first: bool) -> bool:
    """Whether the tokenizer puts `token_id` first (or last) when it encodes plain text."""
    if token_id is None:
        return False
    ids = tokenizer("hello", add_special_tokens=True)["input_ids"]
    return bool(ids) and (ids[0] if first else ids[-1]) == token_id


def build_vocab(model_dir: Path, tokenizer, vocab_size: int, turn_end: str | None) -> GgufVocab:
    """The GGUF vocabulary for `tokenizer` (loaded from `model_dir`), padded to the model's `vocab_size`."""
    path = model_dir / "tokenizer.json"
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TunelabError(f"{path}: cannot read the tokenizer ({exc}); GGUF export needs a tokenizer.json") from exc
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise TunelabError(f"{path}: model.type is {model.get('type')!r}; this exporter writes BPE tokenizers only")
    pre_kinds = json.dumps(tok.get("pre_tokenizer") or {})
    byte_level = "ByteLevel" in pre_kinds
    if not byte_level and not model.get("byte_fallback"):
        raise TunelabError(f"{path}: a BPE tokenizer that is neither byte-level nor sentencepiece-style "
                           "(byte_fallback) has no llama.cpp tokenizer model")

    vocab: dict[str, int] = tokenizer.get_vocab()
    added = {t["id"]: t for t in tok.get("added_tokens", [])}
    if len(vocab) > vocab_size:
        raise TunelabError(f"{path}: the tokenizer has {len(vocab)} tokens but the model only {vocab_size} rows")
    by_id = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added and added[i].get("special"):
            tokens.append(text)
            types.append(CONTROL)
        elif i in added:
            tokens.append(text.replace("\u2581", " "))
            types.append(USER_DEFINED)
        elif not byte_level and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            tokens.append(text)
            types.append(BYTE)
        else:
            tokens.append(text)
            types.append(NORMAL)

    merges = _merges(model)
    out = GgufVocab(model="gpt2" if byte_level else "llama",
                    pre=_pre_tokenizer_name(tok, path) if byte_level else "default",
                    tokens=tokens, types=types)
    if byte_level:
        out.merges = merges
    else:
        # llama.cpp merges by score: minus the rank of the merge producing each token keeps BPE's order
        rank: dict[str, int] = {}
        for r, merge in enumerate(merges):
            rank.setdefault(merge.replace(" ", ""), r)
        out.scores = [-float(rank.get(tokens[i], 0)) if types[i] == NORMAL else (0.0 if types[i] == BYTE else -1000.0)
                      for i in range(vocab_size)]
        out.add_space_prefix = "Prepend" in json.dumps(tok.get("normalizer") or {})

    specials = {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "unk": tokenizer.unk_token,
                "pad": tokenizer.pad_token}
    for kind, text in specials.items():
        if text is not None and vocab.get(text) is not None:
            out.special_ids[kind] = vocab[text]
    if turn_end and turn_end in vocab and vocab[turn_end] != out.special_ids.get("eos"):
        out.special_ids["eot"] = vocab[turn_end]  # llama.cpp stops on eot as on eos
    out.add_bos = _adds(tokenizer, out.special_ids.get("bos"), first=True)
    out.add_eos = _adds(tokenizer, out.special_ids.get("eos"), first=False)
    return out


def add_vocab(writer, vocab: GgufVocab) -> None:
    """Write `vocab` through a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id, "eot": writer.add_eot_token_id}
    for kind, token_id in vocab.special_ids.items():
        adders[kind](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.model == "llama":
        # llama.cpp prepends a space only when told; the HF normalizer says whether it does (Gemma: no)
        writer.add_add_space_prefix(vocab.add_space_prefix)
