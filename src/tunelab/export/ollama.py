"""An Ollama Modelfile beside a GGUF: FROM, TEMPLATE (Go template syntax), PARAMETER stop and defaults.

Ollama renders chats with a Go template, not the Jinja template the model was trained with, and a
mismatch is the classic "the exported model never stops" bug. A Jinja template cannot be translated in
general, so the training template is *recognised by what it renders*: it is rendered (with transformers'
Jinja renderer) on a fixed set of probe conversations and compared with each known turn format:
- chatml: `<|im_start|>role\\n...<|im_end|>\\n` per message, optionally a fixed default system message
  when the chat does not open with one (SmolLM2's), and `<|im_start|>assistant\\n` to generate;
- gemma: `<start_of_turn>user\\n...<end_of_turn>\\n` / `<start_of_turn>model\\n...`, a system message
  folded into the first user turn followed by a blank line, `<start_of_turn>model\\n` to generate.
The Go template is generated from the format that reproduces every probe exactly; a template no format
reproduces is an error (nothing is written), never a guess.

Known, documented differences: a leading `bos_token` the Jinja template writes is left out of the Go
template when the GGUF's tokenizer adds BOS itself (llama.cpp and Ollama do, so the prompt still gets
exactly one); and Go templates cannot trim, so Gemma's `| trim` of message content is not applied (the
same text for any content without leading or trailing whitespace, which is what chat clients send).
A chat whose last message is the assistant's is left open for Ollama to continue, as Ollama's own
templates do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import write_text
from .gguf import check_may_write, record_files

# Ollama's Modelfile parameters this writes, and the Hugging Face generation names that map onto them
_PARAMS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repeat_penalty": float,
           "seed": int, "num_predict": int, "num_ctx": int}
_ALIASES = {"max_new_tokens": "num_predict", "repetition_penalty": "repeat_penalty"}

_PROBE_TEXTS = ("Hello there.", "What is 2 + 2?", "It is 4.", "Thanks!", "Be brief.")


def _probes() -> list[list[dict[str, str]]]:
    u1, u2, a1, u3, s = _PROBE_TEXTS
    return [
        [{"role": "user", "content": u1}],
        [{"role": "system", "content": s}, {"role": "user", "content": u2}],
        [{"role": "user", "content": u2}, {"role": "assistant", "content": a1}, {"role": "user", "content": u3}],
        [{"role": "system", "content": s}, {"role": "user", "content": u2}, {"role": "assistant", "content": a1},
         {"role": "user", "content": u3}],
    ]


@dataclass(frozen=True)
class TurnFormat:
    """A chat format Ollama can express: its name, a fixed default system text (chatml), the bos text
    the Jinja template opens with ("" for none)."""

    name: str
    default_system: str | None = None
    bos_text: str = ""

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """What the Jinja template renders for `messages` if it has this format."""
        out = self.bos_text
        if self.name == "chatml":
            if messages and messages[0]["role"] != "system" and self.default_system is not None:
                out += f"<|im_start|>system\n{self.default_system}<|im_end|>\n"
            for m in messages:
                out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
            return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")
        system, turns = (messages[0]["content"], messages[1:]) if messages and messages[0]["role"] == "system" \
            else (None, messages)
        for i, m in enumerate(turns):
            if m["role"] == "user":
                prefix = system + "\n\n" if system is not None and i == 0 else ""
                out += f"<start_of_turn>user\n{prefix}{m['content']}<end_of_turn>\n"
            else:
                out += f"<start_of_turn>model\n{m['content']}<end_of_turn>\n"
        return out + ("<start_of_turn>model\n" if add_generation_prompt else "")

    def go_template(self, tokenizer_adds_bos: bool) -> str:
        """The Ollama TEMPLATE for this format (Go text/template over .Messages). Every action that
        follows a line break trims it ({{-), so the only newlines rendered are the format's own."""
        bos = "" if tokenizer_adds_bos else self.bos_text
        head = (bos + "{{- range $i, $m := .Messages }}\n"
                "{{- $last := eq (len (slice $.Messages $i)) 1 }}")
        if self.name == "chatml":
            system = ""
            if self.default_system is not None:
                system = ('{{- if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>system\n'
                          + self.default_system.replace("{{", '{{ "{{" }}') + "<|im_end|>\n{{ end }}")
            return (head + system + "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}"
                    '{{ if or (not $last) (ne $m.Role "assistant") }}<|im_end|>\n{{ end }}\n'
                    '{{- if and $last (ne $m.Role "assistant") }}<|im_start|>assistant\n{{ end }}\n'
                    "{{- end }}")
        return (head + "\n"
                '{{- if eq $m.Role "user" }}<start_of_turn>user\n'
                '{{ if and (eq $i 1) (eq (index $.Messages 0).Role "system") }}{{ (index $.Messages 0).Content }}\n\n'
                "{{ end }}{{ $m.Content }}<end_of_turn>\n"
                "{{ if $last }}<start_of_turn>model\n{{ end }}\n"
                '{{- else if eq $m.Role "assistant" }}<start_of_turn>model\n{{ $m.Content }}'
                "{{ if not $last }}<end_of_turn>\n{{ end }}\n"
                "{{- end }}\n{{- end }}")


def render_jinja(template: str, messages: list[dict[str, str]], add_generation_prompt: bool,
                 special_tokens: dict[str, str]) -> str:
    """The training template's text for `messages`, rendered as transformers renders it."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered = render_jinja_template([messages], chat_template=template,
                                     add_generation_prompt=add_generation_prompt, **special_tokens)
    return rendered[0][0] if isinstance(rendered, tuple) else rendered


def recognise(template: str, special_tokens: dict[str, str]) -> TurnFormat:
    """The TurnFormat that renders exactly what `template` renders on every probe, or TunelabError."""
    try:
        opening = render_jinja(template, [{"role": "user", "content": _PROBE_TEXTS[0]}], False, special_tokens)
    except Exception as exc:  # noqa: BLE001 - any Jinja failure means the template cannot be recognised
        raise TunelabError(f"the chat template does not render a plain user message ({exc}); "
                           "no Ollama template was written") from exc
    bos = special_tokens.get("bos_token") or ""
    candidates = []
    # a bos token that is also a turn marker (SmolLM2's is <|im_start|>) is tried both ways
    for bos_text in dict.fromkeys([bos if bos and opening.startswith(bos) else "", ""]):
        candidates += [TurnFormat("gemma", None, bos_text), TurnFormat("chatml", None, bos_text)]
        start, marker = bos_text + "<|im_start|>system\n", "<|im_start|>user\n"
        if marker in opening and opening.startswith(start):
            head = opening[len(start):opening.index(marker)]
            if head.endswith("<|im_end|>\n"):
                candidates.append(TurnFormat("chatml", head[: -len("<|im_end|>\n")], bos_text))
    for fmt in candidates:
        try:
            if all(render_jinja(template, conv, agp, special_tokens) == fmt.render(conv, agp)
                   for conv in _probes() for agp in (True, False)):
                return fmt
        except Exception:  # noqa: BLE001, S112 - a template that raises on a probe is not this format
            continue
    raise TunelabError(
        "the chat template is not one tunelab can translate into an Ollama (Go) template: it matches none of "
        "the known turn formats (ChatML <|im_start|>/<|im_end|>, Gemma <start_of_turn>/<end_of_turn>). "
        "No Modelfile was written; write its TEMPLATE by hand from the template in the GGUF's metadata")


def modelfile_params(generation: dict[str, Any] | None) -> dict[str, Any]:
    """Modelfile defaults from generation settings (Hugging Face or Ollama names); unknown names are an
    error. Without settings, or with do_sample false: temperature 0 (greedy, as tunelab evaluates)."""
    generation = dict(generation or {})
    sampling = generation.pop("do_sample", None)
    out: dict[str, Any] = {}
    for key, value in generation.items():
        if value is None:
            continue
        name = _ALIASES.get(key, key)
        if name not in _PARAMS:
            raise TunelabError(f"generation setting {key!r} has no Ollama Modelfile parameter "
                               f"(known: {', '.join(sorted(set(_PARAMS) | set(_ALIASES)))})")
        try:
            out[name] = _PARAMS[name](value)
        except (TypeError, ValueError) as exc:
            raise TunelabError(f"generation setting {key}={value!r} is not a number") from exc
    if not sampling:
        out["temperature"] = 0.0
        for key in ("top_p", "top_k", "min_p"):
            out.pop(key, None)  # meaningless when greedy
    return out


def _quoted(value: str, what: str) -> str:
    if any(c in value for c in '"\n\r'):
        raise TunelabError(f"{what} {value!r} holds a quote or a line break, which a Modelfile cannot carry")
    return f'"{value}"'


def modelfile_path(gguf_path: Path) -> Path:
    return gguf_path.with_name(gguf_path.stem + ".Modelfile")


def write_modelfile(gguf_path: Path, *, chat_template: str, stop_tokens: list[str] | tuple[str, ...],
                    params: dict[str, Any] | None = None, special_tokens: dict[str, str] | None = None,
                    tokenizer_adds_bos: bool | None = None) -> Path:
    """Write `<stem>.Modelfile` beside `gguf_path` and return its path.

    chat_template: the training (Jinja) template, translated as the module docstring says.
    stop_tokens: each becomes a PARAMETER stop. params: Modelfile defaults (see modelfile_params; None
    means greedy). special_tokens ({"bos_token": ..., "eos_token": ...}) and tokenizer_adds_bos are read
    from the GGUF's metadata when not given.
    """
    gguf_path = Path(gguf_path)
    if special_tokens is None or tokenizer_adds_bos is None:
        found, adds = _gguf_specials(gguf_path)
        special_tokens = found if special_tokens is None else special_tokens
        tokenizer_adds_bos = adds if tokenizer_adds_bos is None else tokenizer_adds_bos
    if not stop_tokens:
        raise TunelabError("no stop tokens given: a served model would never stop; pass the template's "
                           "end-of-turn token")
    fmt = recognise(chat_template, special_tokens)
    go = fmt.go_template(tokenizer_adds_bos)
    if '"""' in go:
        raise TunelabError('the Ollama template would contain """, which a Modelfile cannot quote')
    target = modelfile_path(gguf_path)
    record = check_may_write(target, gguf_path)
    lines = [
        f"# Ollama Modelfile written by tunelab for {gguf_path.name}: chat format {fmt.name}, translated from",
        "# the training chat template (which the GGUF also carries as tokenizer.chat_template).",
        f"# Use: ollama create NAME -f {target.name}",
        f"FROM ./{gguf_path.name}",
        f'TEMPLATE """{go}"""',
    ]
    lines += [f"PARAMETER stop {_quoted(s, 'stop token')}" for s in dict.fromkeys(stop_tokens)]
    for key, value in modelfile_params(None).items() if params is None else params.items():
        if key not in _PARAMS:
            raise TunelabError(f"Modelfile parameter {key!r} is not one tunelab writes ({', '.join(_PARAMS)})")
        lines.append(f"PARAMETER {key} {value}")
    record_files(gguf_path, record, target.name, modelfile={"format": fmt.name, "stop": list(stop_tokens)})
    return write_text(target, "\n".join(lines) + "\n")


def _gguf_specials(gguf_path: Path) -> tuple[dict[str, str], bool]:
    from ..models.gguf_meta import read_gguf_header

    header = read_gguf_header(gguf_path, keep_arrays=("tokenizer.ggml.tokens",))
    specials = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id")):
        token = header.token(header.metadata.get(f"tokenizer.ggml.{key}"))
        if token is not None:
            specials[name] = token
    return specials, bool(header.metadata.get("tokenizer.ggml.add_bos_token", False))
