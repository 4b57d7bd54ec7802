"""Batched text generation: the one engine evaluation, the judge and the server all decode with.

Design, and why:
- Prompts are sorted by token length and cut into batches, so padding is small; results come back in
  the caller's order.
- Prompts are LEFT padded, with position ids counted from each row's first real token, so every row's
  new tokens sit at the right edge and one decode step serves the whole batch.
- A prefix every prompt of a batch shares (a chat template's default system prompt, a few-shot
  primer) is run once at batch size 1 and its KV cache repeated for every row; a fine-tuning eval
  set's prompts often share a third of their tokens that way.
- The loop drives the model directly (one forward per new token over a DynamicCache). Prefill
  projects only the last position onto the vocabulary (`logits_to_keep=1`): the full-vocab logits of
  every prompt position would cost more than the rest of the prefill for a small model.
- A row that finishes (end-of-sequence token, stop string or max_new_tokens) is dropped from the
  batch and from the KV cache, so late steps compute only for rows still generating.
- A row may be constrained to a JSON schema (`schemas=`, one per prompt or None): before each pick its
  logits are masked to the tokens the schema's grammar allows (models/grammar.py, through llguidance),
  so its reply always parses; the row ends the moment its JSON is complete. A `grammar.Choice` in place
  of a schema makes the reply exactly one of its options (a label set).
- Greedy decoding takes the first maximum (as `torch.argmax` and HF generate do), so it is
  deterministic; sampling draws from one torch.Generator per prompt, seeded from `seed` and the
  prompt's position, so a sampled answer does not depend on batch size or on its neighbours.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import TunelabError

Prompt = list[dict[str, str]] | str


@dataclass
class GenerationConfig:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1 (got {self.max_new_tokens})")
        if self.temperature < 0:
            problems.append(f"temperature must be 0 (greedy) or positive (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or positive (got {self.top_k})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size})")
        if any(not s for s in self.stop):
            problems.append("stop strings must not be empty")
        if problems:
            raise TunelabError("invalid generation settings: " + "; ".join(problems))
        self.stop = list(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decoding": "greedy" if self.greedy else "sampling"}


@dataclass
class GenerationOutput:
    """One answer. finish_reason is "stop" (end-of-sequence token or stop string) or "length"."""

    text: str
    n_prompt_tokens: int
    n_new_tokens: int
    finish_reason: str
    latency_s: float  # from the start of its batch's prefill to its last token
    token_ids: list[int] = field(default_factory=list, repr=False)
    stop_token_id: int | None = None  # the end-of-sequence token that ended it (not in token_ids), if one did


class Generator:
    """Batched generation for a causal LM and its tokenizer.

    Message-list prompts are rendered with the tokenizer's chat template (ending with the assistant
    turn's opening) when `chat_template` is true, and as plain text (contents joined by blank lines)
    when it is false. String prompts are raw text and never templated, as in a completions API.

    On CPU, torch's thread count is set to `threads` (default: the physical cores; hyper-threads
    only contend for the same matmul units). It is process-wide, as torch's setting is.
    """

    # Shorter shared prefixes are not worth the extra forward pass.
    min_shared_prefix = 8

    def __init__(self, model: Any, tokenizer: Any, chat_template: bool = True, threads: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.device = next(model.parameters()).device
        self.stop_token_ids: set[int] = stop_token_ids(model, tokenizer)
        if not self.stop_token_ids:
            raise TunelabError("the tokenizer has no end-of-sequence token; generation could never stop early")
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else min(self.stop_token_ids)
        self._keep_last = accepts_logits_to_keep(model)
        self._via_hf_generate = is_prompt_learning(model)
        self.max_positions = _max_positions(model)
        self._grammar: Any = None  # models.grammar.JsonGrammar, prepared on the first constrained call
        if self.device.type == "cpu":
            from ..models import physical_cores

            torch.set_num_threads(threads or physical_cores())

    # -- prompts -------------------------------------------------------------------------------
    def render(self, prompt: Prompt) -> str:
        """The exact text fed to the model for one prompt."""
        if isinstance(prompt, str):
            return prompt
        if not self.chat_template:
            return "\n\n".join(m["content"] for m in prompt)
        if not getattr(self.tokenizer, "chat_template", None):
            raise TunelabError(
                "this tokenizer has no chat template, so chat prompts cannot be rendered; "
                "turn the chat template off (chat_template=False) to feed the prompt text as is"
            )
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt. Templated text carries its own special tokens; raw text gets the
        tokenizer's usual ones (a BOS for Llama-style tokenizers)."""
        templated = not isinstance(prompt, str) and self.chat_template
        ids = self.tokenizer(self.render(prompt), add_special_tokens=not templated)["input_ids"]
        if not ids:
            raise TunelabError("a prompt encodes to no tokens; give it some text")
        return list(ids)

    # -- generation ----------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Prompt],
        cfg: GenerationConfig | None = None,
        *,
        on_batch: Callable[[int], None] | None = None,
        schemas: Sequence[dict[str, Any] | Any | None] | None = None,
    ) -> list[GenerationOutput]:
        """Answers for `prompts`, in their order. `on_batch(n)` is called after each batch of n.
        `schemas[i]`, when given and not None, is a JSON schema (or a grammar.Choice) prompt i's answer
        is decoded under."""
        cfg = cfg or GenerationConfig()
        encoded = [self.encode(p) for p in prompts]
        self._check_lengths(encoded)
        stop_ids = self.stop_token_ids | _single_token_stops(self.tokenizer, cfg.stop)
        rows = self._row_grammars(schemas, len(prompts))
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        results: list[GenerationOutput | None] = [None] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                # PEFT ignores position ids under prompt learning, so a left-padded row would be
                # shifted: those models go one prompt at a time.
                step = 1 if self._via_hf_generate else cfg.batch_size
                for start in range(0, len(order), step):
                    batch = order[start : start + step]
                    run = self._generate_batch_hf if self._via_hf_generate else self._generate_batch
                    if rows is None:
                        outs = run([encoded[i] for i in batch], batch, cfg, stop_ids)
                    else:
                        outs = self._generate_batch([encoded[i] for i in batch], batch, cfg, stop_ids,
                                                    [rows[i] for i in batch])
                    for i, out in zip(batch, outs, strict=True):
                        results[i] = out
                    if on_batch is not None:
                        on_batch(len(batch))
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def _row_grammars(self, schemas: Sequence[dict[str, Any] | Any | None] | None, n: int) -> list[Any] | None:
        """One grammar state per prompt (None where unconstrained), or None when no prompt has a schema."""
        if schemas is None or all(s is None for s in schemas):
            return None
        if len(schemas) != n:
            raise TunelabError(f"{len(schemas)} schemas for {n} prompts; give one (or None) per prompt")
        if self._via_hf_generate:
            raise TunelabError("constrained decoding does not support prompt/prefix-tuning adapters "
                               "(HF generate drives their decoding); use a LoRA adapter or no schema")
        if self._grammar is None:
            from .grammar import JsonGrammar

            width = self.model.get_output_embeddings().weight.shape[0]
            self._grammar = JsonGrammar(self.tokenizer, width, self.stop_token_ids)
        return [None if s is None else self._grammar.matcher(s) for s in schemas]

    def _check_lengths(self, encoded: list[list[int]]) -> None:
        if self.max_positions is None:
            return
        for i, ids in enumerate(encoded):
            if len(ids) >= self.max_positions:
                raise TunelabError(
                    f"prompt {i} has {len(ids)} tokens but the model's context is {self.max_positions}; "
                    "shorten it"
                )

    def _generate_batch(
        self, prompts: list[list[int]], indices: list[int], cfg: GenerationConfig, stop_ids: set[int],
        grammars: list[Any] | None = None,
    ) -> list[GenerationOutput]:
        from transformers import DynamicCache

        t0 = time.perf_counter()
        cache = DynamicCache(config=self.model.config)
        logits, attn, next_pos = self._prefill(prompts, cache)

        rngs = None if cfg.greedy else [_row_generator(cfg.seed, i, self.device) for i in indices]
        stops = _StopMatcher(self.tokenizer, cfg.stop)
        tokens: list[list[int]] = [[] for _ in prompts]
        finished: list[tuple[str, float, int | None] | None] = [None] * len(prompts)
        active = list(range(len(prompts)))
        while True:
            if grammars is not None:
                self._grammar.mask(logits, [grammars[a] for a in active])
            picked = _pick(logits, cfg, None if rngs is None else [rngs[a] for a in active])
            keep: list[int] = []
            now = time.perf_counter() - t0
            for j, (row, tok) in enumerate(zip(active, picked.tolist(), strict=True)):
                grammar = None if grammars is None else grammars[row]
                reason = self._advance(tokens[row], tok, stop_ids, stops, cfg.max_new_tokens, grammar)
                if reason is None:
                    keep.append(j)
                else:
                    finished[row] = (reason, now, tok if reason == "eos" else None)
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                attn, picked, next_pos = attn[sel], picked[sel], next_pos[sel]
                active = [active[j] for j in keep]
            attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
            logits = self._forward(picked[:, None], attn, next_pos, cache)
            next_pos = next_pos + 1
        return [
            self._output(prompts[r], tokens[r], finished[r], stops)  # type: ignore[arg-type]
            for r in range(len(prompts))
        ]

    def _generate_batch_hf(
        self, prompts: list[list[int]], indices: list[int], cfg: GenerationConfig, stop_ids: set[int]
    ) -> list[GenerationOutput]:
        """The batch through HF generate, for PEFT prompt/prefix tuning: those adapters prepend
        virtual tokens inside every forward call, which only PEFT's own generate hooks undo after
        the first step. Sampling is seeded per call from `seed` and the first prompt's index."""
        t0 = time.perf_counter()
        ids, attn = _left_pad(prompts, self.pad_id, self.device)
        kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "eos_token_id": sorted(stop_ids),
                                  "pad_token_id": self.pad_id, "do_sample": not cfg.greedy}
        if not cfg.greedy:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
            torch.manual_seed(cfg.seed * 1_000_003 + indices[0])
        if cfg.stop:
            kwargs.update(stop_strings=cfg.stop, tokenizer=self.tokenizer)
        seqs = self.model.generate(input_ids=ids, attention_mask=attn, **kwargs)
        latency = time.perf_counter() - t0
        stops = _StopMatcher(self.tokenizer, cfg.stop)
        outs = []
        for r, prompt in enumerate(prompts):
            new = seqs[r, ids.shape[1] :].tolist()
            end = next((i for i, t in enumerate(new) if t in stop_ids), None)
            if end is not None:
                tokens, reason = new[:end], "eos"
            else:
                tokens = new
                while tokens and tokens[-1] == self.pad_id:  # rows stopped by a stop string are padded
                    tokens = tokens[:-1]
                reason = "stop" if stops.hit(tokens) else "length"
            outs.append(self._output(prompt, tokens, (reason, latency, new[end] if end is not None else None), stops))
        return outs

    def _prefill(self, prompts: list[list[int]], cache: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the prompts into `cache`: (last-position logits, attention mask, next position ids).

        A prefix every prompt of the batch shares (a chat template's system prompt, a few-shot
        primer) is computed once and its KV cache repeated per row; the rest of each prompt is
        left-padded after it. Positions skip the padding, so every row sees exactly its own tokens
        at their own positions.
        """
        shared = _common_prefix_len(prompts)
        if len(prompts) < 2 or shared < self.min_shared_prefix:
            shared = 0
        if shared:
            head = torch.tensor([prompts[0][:shared]], device=self.device)
            self._forward(head, torch.ones_like(head), torch.arange(shared, device=self.device)[None], cache)
            cache.batch_repeat_interleave(len(prompts))
        ids, rest_attn = _left_pad([p[shared:] for p in prompts], self.pad_id, self.device)
        positions = shared + (rest_attn.cumsum(-1) - 1).clamp_min(0)
        attn = torch.cat([rest_attn.new_ones((len(prompts), shared)), rest_attn], dim=1)
        logits = self._forward(ids, attn, positions, cache)
        return logits, attn, positions[:, -1:] + 1

    @staticmethod
    def _advance(
        row_tokens: list[int], tok: int, stop_ids: set[int], stops: _StopMatcher, max_new: int, grammar: Any = None
    ) -> str | None:
        """Add one picked token to a row; why the row is done ("eos", "stop", "length", "complete": its
        grammar allows nothing more), else None."""
        if tok in stop_ids:
            return "eos"
        row_tokens.append(tok)
        if grammar is not None:
            grammar.advance(tok)
            if grammar.done:
                return "complete"
        if stops.hit(row_tokens):
            return "stop"
        if len(row_tokens) >= max_new:
            return "length"
        return None

    def _output(
        self, prompt: list[int], new: list[int], finished: tuple[str, float, int | None], stops: _StopMatcher
    ) -> GenerationOutput:
        reason, latency, stop_token = finished
        text = stops.cut(self.tokenizer.decode(new, skip_special_tokens=True))
        return GenerationOutput(
            text=text,
            n_prompt_tokens=len(prompt),
            # the end-of-sequence token was computed like any other, so it counts (as in HF generate)
            n_new_tokens=len(new) + (reason == "eos"),
            finish_reason="stop" if reason in ("eos", "complete") else reason,
            latency_s=latency,
            token_ids=list(new),
            stop_token_id=stop_token,
        )

    def _forward(self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": attn,
            "position_ids": pos,
            "past_key_values": cache,
            "use_cache": True,
        }
        if self._keep_last:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1, :]


class _StopMatcher:
    """Finds stop strings in generated text, decoding only the tail of each row per step."""

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        # A token is at least one byte and a character at most four, so the last 4*len+4 tokens
        # always cover a stop string that ends at the newest token.
        self.window = 4 * max((len(s) for s in stop), default=0) + 4

    def hit(self, tokens: list[int]) -> bool:
        if not self.stop:
            return False
        tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stop)

    def cut(self, text: str) -> str:
        """The text before the earliest stop string."""
        cut = len(text)
        for s in self.stop:
            at = text.find(s)
            if at != -1:
                cut = min(cut, at)
        return text[:cut]


def _pick(logits: torch.Tensor, cfg: GenerationConfig, rngs: list[torch.Generator] | None) -> torch.Tensor:
    """The next token of every row: argmax under greedy, else a draw after temperature/top-k/top-p."""
    if rngs is None:
        return logits.argmax(dim=-1)
    scores = logits.float() / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < scores.shape[-1]:
        kth = torch.topk(scores, cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= cfg.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
    probs = scores.softmax(dim=-1)
    draws = [torch.multinomial(probs[i], 1, generator=rngs[i]) for i in range(probs.shape[0])]
    return torch.cat(draws)


def _row_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + index) % (2**63))
    return gen


def _common_prefix_len(prompts: list[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own (its last
    position's logits give the first new token)."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attn[i, width - len(p) :] = 1
    return ids.to(device), attn.to(device)


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The chat template's end-of-turn token(s), the tokenizer's EOS and the model's generation EOS."""
    from .templates import stop_token_ids as template_stop_ids

    ids = set(template_stop_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    return ids


def _single_token_id(tokenizer: Any, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def _single_token_stops(tokenizer: Any, stop: list[str]) -> set[int]:
    """Stop strings that are special tokens (skipped when decoding) must match as token ids."""
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    out = set()
    for s in stop:
        if s in special:
            tid = _single_token_id(tokenizer, s)
            if tid is not None:
                out.add(tid)
    return out


def accepts_logits_to_keep(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def is_prompt_learning(model: Any) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    value = getattr(text_cfg, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None
