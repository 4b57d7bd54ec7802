"""Read a GGUF file's header (metadata and tensor shapes) without loading any weights.

`transformers` and the `gguf` package parse every token of the vocabulary into Python objects before
they return anything; for Gemma's 262k-token vocabulary that takes ~20 s. `tunelab models info` only
needs a handful of scalars, the parameter count and a few token strings, so this reader walks the
header once over a memory map, skipping large arrays it was not asked for. Format reference: the GGUF
spec (magic "GGUF", version 2/3, little-endian, u64 counts and string lengths).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelabError

# GGUF value type id -> struct format of one scalar of that type
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9

# general.architecture -> the transformers class a GGUF of that architecture loads as
HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "falcon": "FalconForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
}


@dataclass
class GgufHeader:
    """What a GGUF file says about itself: metadata (large arrays summarised) and tensor shapes."""

    path: Path
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped key, e.g. arch_value('block_count') reads 'llama.block_count'."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def n_params(self) -> int:
        total = 0
        for shape in self.tensors.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    @property
    def vocab_size(self) -> int | None:
        return self.arch_value("vocab_size") or self.array_lengths.get("tokenizer.ggml.tokens")

    def token(self, token_id: int | None) -> str | None:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if token_id is None or not isinstance(tokens, list) or not 0 <= token_id < len(tokens):
            return None
        return tokens[token_id]

    def shape_config(self) -> dict[str, Any]:
        """The shape fields of a transformers config, as far as the header gives them."""
        hidden = self.arch_value("embedding_length")
        heads = self.arch_value("attention.head_count")
        return {
            "hidden_size": hidden,
            "num_hidden_layers": self.arch_value("block_count"),
            "intermediate_size": self.arch_value("feed_forward_length"),
            "num_attention_heads": heads,
            "num_key_value_heads": self.arch_value("attention.head_count_kv", heads),
            "head_dim": self.arch_value("attention.key_length") or (hidden // heads if hidden and heads else None),
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.arch_value("context_length"),
            # an untied model stores its own output projection
            "tie_word_embeddings": "output.weight" not in self.tensors,
        }


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes):
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = struct.unpack_from("<Q", self.buf, self.pos)[0]
        self.pos += 8 + n

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        raise ValueError(f"unknown GGUF value type {vtype}")


def _read_array(cur: _Cursor, keep: bool, limit: int) -> tuple[Any, int]:
    """Return (the array or None when skipped, its length); small arrays are always kept."""
    etype = cur.unpack("I")
    count = cur.unpack("Q")
    if not keep and count > limit:
        if etype == _STRING:
            for _ in range(count):
                cur.skip_string()
        elif etype in _SCALARS:
            cur.pos += count * struct.calcsize(_SCALARS[etype])
        else:
            raise ValueError("nested GGUF arrays are not supported")
        return None, count
    if etype == _ARRAY:
        raise ValueError("nested GGUF arrays are not supported")
    return [cur.value(etype) for _ in range(count)], count


def read_gguf_header(path: str | Path, keep_arrays: tuple[str, ...] = (), small_array: int = 64) -> GgufHeader:
    """Parse the header of `path`; arrays longer than `small_array` are kept only if named in keep_arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(path, buf, set(keep_arrays), small_array)
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise TunelabError(f"{path}: not a readable GGUF file ({exc}); check the file is complete") from exc


def _parse(path: Path, buf: mmap.mmap, keep: set[str], small_array: int) -> GgufHeader:
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError("missing GGUF magic bytes")
    cur = _Cursor(buf)
    cur.pos = 4
    version = cur.unpack("I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old (need 2 or later)")
    n_tensors = cur.unpack("Q")
    n_kv = cur.unpack("Q")
    header = GgufHeader(path=path, version=version, metadata={})
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.unpack("I")
        if vtype == _ARRAY:
            value, count = _read_array(cur, key in keep, small_array)
            header.array_lengths[key] = count
            if value is not None:
                header.metadata[key] = value
        else:
            header.metadata[key] = cur.value(vtype)
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("I")
        dims = tuple(cur.unpack("Q") for _ in range(n_dims))
        cur.pos += 4 + 8  # ggml type and data offset: not needed for shapes
        header.tensors[name] = dims
    return header
