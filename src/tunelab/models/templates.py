"""Chat templates: the model's own where it has one, a declared tunelab default where it has none.

The failure users report most after fine-tuning is a model that never stops: the chat template or the
end-of-turn token differs between training and serving. So there is exactly one template per model,
decided here, saved into the cached tokenizer, and described by `template_info` (name, source,
sha256, the end-of-turn token and the stop tokens) for training and serving to record and compare.

Defaults for template-less tokenizers, chosen by which special tokens the vocabulary really has:
- `gemma-turns`: `<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n...<end_of_turn>\\n`,
  a system message folded into the first user turn (the format Gemma instruction models use);
  generation ends at `<end_of_turn>`.
- `chatml`: `<|im_start|>role\\n...<|im_end|>\\n`; generation ends at `<|im_end|>`.
- `plain`: `### User:` / `### Assistant:` blocks, each assistant reply closed by the tokenizer's eos.
The defaults wrap assistant content in `{% generation %}` so `return_assistant_tokens_mask=True` works;
those tags do not change the rendered text. Transformers renders templates with trim_blocks and
lstrip_blocks, so every literal newline below is written as a '\\n' string expression.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import TunelabError

GEMMA_TURNS_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_prefix = messages[0]['content'] | trim + '\\n\\n' %}"
    "{% set turns = messages[1:] %}"
    "{% else %}{% set system_prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\\n' }}"
    "{% generation %}{{ message['content'] | trim + '<end_of_turn>' }}{% endgeneration %}{{ '\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<start_of_turn>user\\n' + (system_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{% else %}{{ raise_exception('gemma-turns template: unsupported role ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\\n' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ '### Assistant:\\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\\n' }}{% endif %}"
)

DEFAULT_TEMPLATES = {"gemma-turns": GEMMA_TURNS_TEMPLATE, "chatml": CHATML_TEMPLATE, "plain": PLAIN_TEMPLATE}
GENERATION_HEADERS = {"gemma-turns": "<start_of_turn>model\n", "chatml": "<|im_start|>assistant\n",
                      "plain": "### Assistant:\n"}

# (name, marker that identifies a model's own template, the token that ends an assistant turn)
_KNOWN_FAMILIES = [
    ("chatml", "<|im_start|>", "<|im_end|>"),
    ("gemma-turns", "<start_of_turn>", "<end_of_turn>"),
    ("llama3", "<|start_header_id|>", "<|eot_id|>"),
    ("phi3", "<|assistant|>", "<|end|>"),
    ("mistral-inst", "[INST]", None),
]


@dataclass(frozen=True)
class ChatTemplate:
    """One chat template and what generation must stop on when a model uses it."""

    name: str
    source: str  # "model" (shipped with the model) or "tunelab-default"
    template: str
    eos_token: str  # the token that ends an assistant turn: the generation EOS
    stop_tokens: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return template_sha256(self.template)

    def info(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("template")
        data["stop_tokens"] = list(self.stop_tokens)
        data["sha256"] = self.sha256
        return data


def template_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _vocab(tokenizer) -> dict[str, int]:
    return tokenizer.get_vocab()


def _has_tokens(vocab: dict[str, int] | set[str], *tokens: str) -> bool:
    return all(t in vocab for t in tokens)


def _stop_tokens(turn_end: str, eos: str | None, vocab) -> tuple[str, ...]:
    stops = [turn_end]
    if eos and eos != turn_end and eos in vocab:
        stops.append(eos)
    return tuple(stops)


def default_template_for_vocab(vocab: dict[str, int] | set[str], eos_token: str | None) -> ChatTemplate:
    """The declared default for a tokenizer without a template, given its vocabulary and eos token."""
    if _has_tokens(vocab, "<start_of_turn>", "<end_of_turn>"):
        turn_end = "<end_of_turn>"
        return ChatTemplate("gemma-turns", "tunelab-default", GEMMA_TURNS_TEMPLATE, turn_end,
                            _stop_tokens(turn_end, eos_token, vocab))
    if _has_tokens(vocab, "<|im_start|>", "<|im_end|>"):
        turn_end = "<|im_end|>"
        return ChatTemplate("chatml", "tunelab-default", CHATML_TEMPLATE, turn_end,
                            _stop_tokens(turn_end, eos_token, vocab))
    if not eos_token:
        raise TunelabError(
            "the tokenizer has no chat template and no eos token, so no reply could ever end; "
            "set tokenizer.eos_token (or give the model a chat template) before training"
        )
    return ChatTemplate("plain", "tunelab-default", PLAIN_TEMPLATE, eos_token, (eos_token,))


def _current_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # a tokenizer may carry several named templates
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def describe_template(template: str, vocab: dict[str, int] | set[str], eos_token: str | None) -> ChatTemplate:
    """Name a template string and find its end-of-turn token (a tunelab default is recognised exactly)."""
    for name, text in DEFAULT_TEMPLATES.items():
        if template == text:
            chosen = default_template_for_vocab(vocab, eos_token)
            if chosen.name == name:
                return chosen
            turn_end = eos_token if name == "plain" else {"gemma-turns": "<end_of_turn>",
                                                           "chatml": "<|im_end|>"}[name]
            return ChatTemplate(name, "tunelab-default", text, turn_end, _stop_tokens(turn_end, eos_token, vocab))
    for name, marker, turn_end in _KNOWN_FAMILIES:
        if marker in template:
            end = turn_end if turn_end and turn_end in vocab else eos_token
            return ChatTemplate(name, "model", template, end or "", _stop_tokens(end, eos_token, vocab) if end else ())
    return ChatTemplate("custom", "model", template, eos_token or "", (eos_token,) if eos_token else ())


def chat_template_for(tokenizer) -> ChatTemplate:
    """The template this tokenizer uses, or the default `ensure_chat_template` would give it."""
    vocab = _vocab(tokenizer)
    current = _current_template(tokenizer)
    if current is None:
        return default_template_for_vocab(vocab, tokenizer.eos_token)
    return describe_template(current, vocab, tokenizer.eos_token)


def ensure_chat_template(tokenizer) -> dict[str, Any]:
    """Give a template-less tokenizer its declared default (in place); return `template_info`."""
    chosen = chat_template_for(tokenizer)
    if _current_template(tokenizer) is None:
        tokenizer.chat_template = chosen.template
    return chosen.info()


def template_info(tokenizer) -> dict[str, Any]:
    """{"name", "source": "model"|"tunelab-default", "sha256", "eos_token", "stop_tokens"} for this tokenizer.

    For a tokenizer without a template this describes the default that `ensure_chat_template` (and
    so `load_tokenizer`) applies.
    """
    return chat_template_for(tokenizer).info()


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids generation must stop on: the end-of-turn token first, then the plain eos if different."""
    # looked up in the vocabulary, not through convert_tokens_to_ids, which maps unknown tokens to unk
    vocab = _vocab(tokenizer)
    ids: list[int] = []
    for token in chat_template_for(tokenizer).stop_tokens:
        token_id = vocab.get(token)
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids


def generation_header(tokenizer) -> str | None:
    """The text `add_generation_prompt=True` appends, for the known families (None if unknown)."""
    return GENERATION_HEADERS.get(chat_template_for(tokenizer).name)
