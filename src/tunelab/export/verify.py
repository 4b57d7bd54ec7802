"""Train/serve parity: does an exported model behave like the trained model it came from?

    result = verify(Path("runs/exp"), Path("out/merged"))      # or a .gguf file
    result.verdict, result.reasons                            # "pass" / "fail" and why

The failure users report most after exporting a fine-tuned model is one that never stops or rambles,
because the chat template or the end-of-turn token changed between training and serving. So two things
are checked, and either can fail the verdict:

- Behaviour. The fixed prompt set `PROMPTS` (short chat prompts stored here, the same for every run, so
  results compare across runs and no run's data is needed) goes through the trained model (base + adapter
  in float32, as `tunelab eval --adapter` scores it; see export.source) and through the artifact, each
  prompt rendered with each side's own chat template and decoded greedily with each side's own stop
  tokens. Reported: the share of prompts with identical greedy output (token ids and where it stopped),
  per prompt both answers, and the largest absolute logit difference over every prompt and output
  position (the trained model's prompt + answer run through both, teacher-forced).
- Metadata, each difference named as such: the chat template text, the stop (end-of-generation) token
  ids, and the bos / eos / pad / end-of-turn special tokens. A merged directory is read with transformers
  (tokenizer files, generation_config.json); a GGUF through its header (models.gguf_meta, the standard
  llama.cpp keys: tokenizer.chat_template, tokenizer.ggml.eos_token_id, ...eot_token_id, ...).

The artifact runs through transformers (a merged directory; a GGUF dequantized by transformers' GGUF
loader) or, for a GGUF where llama.cpp's Python binding `llama_cpp` is installed, through llama.cpp
itself (its own tokenizer and kernels). A GGUF's stop tokens are the ids it declares (eos, eot, eom):
llama.cpp also stops on tokens it recognises by their text, other runtimes do not.

Tolerance. Logits are compared relative to their scale: per prompt the limit is `TOLERANCES[precision]
x max(1, the trained model's largest |logit| on that prompt)`, where precision is the artifact's weight
format. Why each value:
- float32 1e-4: the merge adds the adapter's update to each weight once, in float32 (unit roundoff 6e-8),
  and sums in another order than base + adapter. Measured: 3e-6 of the logit scale on the bundled
  SmolLM2 with a LoRA on q/v/down projections, ~1e-7 on the test models; 1e-4 leaves 30x headroom.
- bfloat16 8e-2: every weight is rounded to 8 significant bits (unit roundoff 2e-3) and activations are
  rounded again in every layer. Measured on the same SmolLM2 merge: 2.8e-2 of the logit scale (3x headroom).
- float16 1e-2: 3 more significant bits than bfloat16, so ~8x smaller errors (derived, not measured here).
- 8-bit GGUF (Q8_0) 0.1, fewer bits (Q6_K ... Q4_*) 0.5: quantization changes each weight by up to half
  a quantization step of its block (1/254 of the block's largest weight for Q8_0, 1/30 for 4-bit), which
  moves logits by a visible fraction of their scale. For such files the logit check catches only gross
  damage (wrong tensor layout, a missing adapter); greedy outputs may differ legitimately.
A prompt whose greedy outputs differ only because, at the first differing token, the trained model's
two candidates were within 2 x tolerance of each other (a near tie the artifact's rounding may flip) is
reported but does not fail the verdict; any other difference (another token by a clear margin, stopping
at a different place, a prompt rendered differently) does.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .source import RunSource, load_trained, read_run

# Short chat prompts: a question, an instruction, a system prompt and a multi-turn exchange, so the
# template's system and assistant-history branches are rendered too.
PROMPTS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Say hello in one short sentence."}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "What colour is the sky on a clear day?"}],
    [{"role": "user", "content": "List three fruits."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "How many days are in a week?"}],
]
PROMPT_SOURCE = "the fixed prompt set tunelab.export.verify.PROMPTS"

TOLERANCES = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 8e-2, "8-bit": 0.1, "quantized": 0.5}
_GGUF_PRECISION = {"ALL_F32": "float32", "MOSTLY_F16": "float16", "MOSTLY_BF16": "bfloat16", "MOSTLY_Q8_0": "8-bit"}


@dataclass
class Difference:
    """One named difference between the trained model and the artifact."""

    what: str  # "chat template", "stop token ids", "bos token", "eos token", "pad token", "end-of-turn token", ...
    trained: Any
    artifact: Any

    def __str__(self) -> str:
        if self.what == "chat template":
            return f"chat template differs: {_first_change(self.trained, self.artifact)}"
        return f"{self.what} differs: trained {self.trained!r}, artifact {self.artifact!r}"


@dataclass
class PromptCheck:
    prompt: list[dict[str, str]]
    trained: str
    artifact: str
    trained_finish: str  # "stop" (a stop token) | "length" (max_new_tokens)
    artifact_finish: str
    trained_tokens: list[int]  # the greedy answers' token ids (the stop token not included)
    artifact_tokens: list[int]
    same_prompt_tokens: bool  # both templates rendered it to the same token ids
    agree: bool  # identical greedy token ids, stopping at the same place
    max_logit_diff: float
    limit: float  # the tolerance for this prompt: TOLERANCES[precision] x max(1, largest |trained logit|)
    note: str = ""  # why the outputs differ
    near_tie: bool = False  # the difference is a flip between two candidates within 2 x tolerance


@dataclass
class VerifyResult:
    run_dir: Path
    artifact: Path
    artifact_kind: str  # "merged" | "gguf"
    engine: str  # what ran the artifact: "transformers" | "llama.cpp"
    precision: str  # the artifact's weight format: a TOLERANCES key
    tolerance: float  # TOLERANCES[precision]: relative to each prompt's logit scale (PromptCheck.limit)
    prompt_source: str
    prompts: list[PromptCheck]
    agreement: float  # share of prompts with identical greedy output
    max_logit_diff: float
    differences: list[Difference] = field(default_factory=list)
    verdict: str = "pass"
    reasons: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"], data["artifact"] = str(self.run_dir), str(self.artifact)
        data["differences"] = [{**asdict(d), "message": str(d)} for d in self.differences]
        data["tolerance_rule"] = (f"{self.tolerance:g} x the trained model's largest |logit| on the prompt "
                                  f"(at least 1), for {self.precision} weights")
        return data


# -- the two sides ----------------------------------------------------------------------------------------


class _Transformers:
    """A causal LM in transformers: greedy decoding and teacher-forced logits, one prompt at a time (no
    padding, so nothing but the weights differs between the sides)."""

    def __init__(self, model: Any):
        self.model = model
        self.device = next(model.parameters()).device

    def logits(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
        return out.float().cpu()

    def greedy(self, ids: list[int], stops: set[int], max_new: int) -> tuple[list[int], str]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        out: list[int] = []
        step = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            for _ in range(max_new):
                logits = self.model(input_ids=step, past_key_values=cache, use_cache=True).logits[0, -1]
                token = int(torch.argmax(logits))  # the first maximum, as HF generate and tunelab's Generator
                if token in stops:
                    return out, "stop"
                out.append(token)
                step = torch.tensor([[token]], device=self.device)
        return out, "length"


class _LlamaCpp:
    """A GGUF in llama.cpp (llama-cpp-python): its own tokenizer and kernels."""

    def __init__(self, path: Path, n_ctx: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False)

    def encode(self, text: str) -> list[int]:
        # the rendered template carries its own special tokens, as tunelab's Generator encodes chat prompts
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def logits(self, ids: list[int]) -> Any:
        import numpy as np
        import torch

        self.llm.reset()
        self.llm.eval(ids)
        return torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))

    def greedy(self, ids: list[int], stops: set[int], max_new: int) -> tuple[list[int], str]:
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        for _ in range(max_new):
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            if token in stops:
                return out, "stop"
            out.append(token)
            self.llm.eval([token])
        return out, "length"


@dataclass
class _Artifact:
    kind: str
    engine: str
    precision: str
    runner: Any
    chat_template: str | None
    stops: set[int]
    special: dict[str, Any]  # bos/eos/pad/end-of-turn: (id, text) pairs, None where not declared
    vocab_size: int | None
    encode: Any  # rendered text -> token ids


def _special_tokens(tokenizer: Any) -> dict[str, Any]:
    from ..models.templates import chat_template_for

    def pair(token: str | None) -> tuple[int, str] | None:
        if not token:
            return None
        token_id = tokenizer.get_vocab().get(token)
        return (int(token_id), token) if token_id is not None else None

    turn_end = chat_template_for(tokenizer).eos_token if getattr(tokenizer, "chat_template", None) else None
    return {"bos token": pair(tokenizer.bos_token), "eos token": pair(tokenizer.eos_token),
            "pad token": pair(tokenizer.pad_token), "end-of-turn token": pair(turn_end)}


def _hf_encoder(tokenizer: Any):
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    if isinstance(value, list | tuple):
        return {int(v) for v in value}
    return set()


def _open_merged(path: Path, device: str) -> _Artifact:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        # the dtype the directory declares: the artifact is checked as a server would load it
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto").to(device).eval()
    except (OSError, ValueError) as exc:
        raise TunelabError(f"{path}: transformers cannot load this model directory ({exc})") from None
    try:
        stops = _eos_ids(GenerationConfig.from_pretrained(str(path)).eos_token_id)
    except OSError:  # no generation_config.json: transformers falls back to config.json's eos
        stops = _eos_ids(getattr(model.config, "eos_token_id", None))
    precision = str(next(model.parameters()).dtype).removeprefix("torch.")
    if precision not in TOLERANCES:
        raise TunelabError(f"{path}: weights in {precision}; verify knows float32, bfloat16 and float16")
    special = _special_tokens(tokenizer)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return _Artifact("merged", "transformers", precision, _Transformers(model), template, stops, special,
                     model.get_output_embeddings().weight.shape[0], _hf_encoder(tokenizer))


def gguf_facts(path: Path) -> dict[str, Any]:
    """What a GGUF declares about generation: chat template, stop ids, special tokens, precision."""
    import gguf

    from ..models.gguf_meta import read_gguf_header

    header = read_gguf_header(path, keep_arrays=("tokenizer.ggml.tokens",))
    meta = header.metadata

    def pair(key: str) -> tuple[int, str] | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return (int(token_id), header.token(int(token_id)) or "") if token_id is not None else None

    try:
        file_type = gguf.LlamaFileType(int(meta["general.file_type"])).name
    except (KeyError, ValueError, TypeError):
        file_type = "unknown"
    stops = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                    "tokenizer.ggml.eom_token_id") if meta.get(k) is not None}
    return {
        "architecture": header.architecture,
        "file_type": file_type,
        "precision": _GGUF_PRECISION.get(file_type, "quantized"),
        "chat_template": meta.get("tokenizer.chat_template"),
        "stops": stops,
        "special": {"bos token": pair("bos_token_id"), "eos token": pair("eos_token_id"),
                    "pad token": pair("padding_token_id"), "end-of-turn token": pair("eot_token_id")},
        "vocab_size": header.vocab_size,
        "context_length": header.arch_value("context_length"),
    }


def _open_gguf(path: Path, device: str, run_tokenizer: Any) -> _Artifact:
    facts = gguf_facts(path)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        llama_cpp = None
    if llama_cpp is not None:
        n_ctx = min(int(facts["context_length"] or 2048), 4096)
        runner: Any = _LlamaCpp(path, n_ctx)
        engine, encode = "llama.cpp", runner.encode
    else:
        import torch
        from transformers import AutoModelForCausalLM

        try:
            # dequantized to float32: the file's own rounding is what is compared
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                         dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise TunelabError(f"{path}: transformers could not load this GGUF ({exc})") from None
        runner = _Transformers(model.to(device).eval())
        # transformers' GGUF loader checks weights; the prompt text is tokenized with the run's vocabulary,
        # which the GGUF's token list must match (its size and special tokens are compared)
        engine, encode = "transformers", _hf_encoder(run_tokenizer)
    return _Artifact("gguf", engine, facts["precision"], runner, facts["chat_template"], facts["stops"],
                     facts["special"], facts["vocab_size"], encode)


def _open_artifact(path: Path, device: str, run_tokenizer: Any) -> _Artifact:
    if path.is_dir():
        return _open_merged(path, device)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _open_gguf(path, device, run_tokenizer)
    if not path.exists():
        raise TunelabError(f"{path}: no such artifact (give a merged model directory or a .gguf file)")
    raise TunelabError(f"{path}: not an artifact verify can read (a merged model directory or a .gguf file)")


# -- comparing ---------------------------------------------------------------------------------------------


def _first_change(a: str | None, b: str | None) -> str:
    if a is None or b is None:
        return f"trained {'none' if a is None else f'{len(a)} characters'}, artifact " \
               f"{'none' if b is None else f'{len(b)} characters'}"
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"first change at character {i}: trained {a[i:i + 40]!r}, artifact {b[i:i + 40]!r}"


def metadata_differences(source: RunSource, tokenizer: Any, artifact: _Artifact,
                         trained_stops: set[int]) -> list[Difference]:
    diffs = []
    if artifact.chat_template != source.chat_template:
        diffs.append(Difference("chat template", source.chat_template, artifact.chat_template))
    if artifact.stops != trained_stops:
        diffs.append(Difference("stop token ids", sorted(trained_stops), sorted(artifact.stops)))
    for what, expected in _special_tokens(tokenizer).items():
        found = artifact.special.get(what)
        if found is None and artifact.kind == "gguf" and what in ("pad token", "end-of-turn token"):
            continue  # optional keys in a GGUF: an absent eot is covered by the stop ids, pad is unused
        if found != expected:
            diffs.append(Difference(what, expected, found))
    vocab = len(tokenizer)
    if artifact.vocab_size is not None and artifact.kind == "gguf" and artifact.vocab_size != vocab:
        diffs.append(Difference("vocabulary size", vocab, artifact.vocab_size))
    return diffs


def _compare_prompt(prompt: list[dict[str, str]], tokenizer: Any, trained: _Transformers, artifact: _Artifact,
                    trained_stops: set[int], relative: float, max_new: int) -> PromptCheck:
    ref_ids = _hf_encoder(tokenizer)(tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                                   tokenize=False))
    if artifact.chat_template:
        art_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False,
                                                 chat_template=artifact.chat_template)
    else:  # an artifact without a template (already a named difference): the trained model's text
        art_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    art_ids = artifact.encode(art_text)
    ref_out, ref_finish = trained.greedy(ref_ids, trained_stops, max_new)
    art_out, art_finish = artifact.runner.greedy(art_ids, artifact.stops, max_new)
    # teacher-forced over the trained model's own prompt and answer: only the weights differ here
    seq = ref_ids + ref_out
    ref_logits, art_logits = trained.logits(seq), artifact.runner.logits(seq)
    width = min(ref_logits.shape[-1], art_logits.shape[-1])
    diff = float((ref_logits[:, :width] - art_logits[:, :width]).abs().max())
    limit = relative * max(1.0, float(ref_logits.abs().max()))
    same_prompt = ref_ids == art_ids
    agree = same_prompt and ref_out == art_out and ref_finish == art_finish
    check = PromptCheck(prompt, _decode(tokenizer, ref_out), _decode(tokenizer, art_out), ref_finish, art_finish,
                        ref_out, art_out, same_prompt, agree, diff, limit)
    if not agree:
        check.note, check.near_tie = _why_different(ref_ids, ref_out, art_out, ref_logits, art_logits,
                                                    same_prompt, limit, width)
    return check


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _why_different(prompt: list[int], ref: list[int], art: list[int], ref_logits: Any, art_logits: Any,
                   same_prompt: bool, tolerance: float, width: int) -> tuple[str, bool]:
    if not same_prompt:
        return "the artifact renders the prompt to other tokens (its chat template or tokenizer differs)", False
    k = next((i for i, (a, b) in enumerate(zip(ref, art, strict=False)) if a != b), min(len(ref), len(art)))
    pos = len(prompt) + k - 1  # the position whose logits chose output token k
    ref_row, art_row = ref_logits[pos, :width], art_logits[pos, :width]
    x, y = int(ref_row.argmax()), int(art_row.argmax())
    if x == y:  # both pick the same token there, but one side stops on it and the other does not
        return (f"stops differently at output token {k}: token {x} ends the answer on one side only "
                "(the stop tokens differ)"), False
    margin = float(ref_row[x] - ref_row[y])
    if margin <= 2 * tolerance:
        return (f"output token {k}: a near tie (the trained model prefers token {x} over the artifact's {y} "
                f"by {margin:.3g}, within 2 x tolerance {2 * tolerance:.3g})"), True
    return (f"output token {k}: the trained model picks token {x}, the artifact {y}; the trained model "
            f"prefers {x} by {margin:.3g} (beyond 2 x tolerance {2 * tolerance:.3g})"), False


def verify(run_dir: Path, artifact: Path, *, prompts: list | None = None, max_new_tokens: int = 32,
           device: str = "cpu") -> VerifyResult:
    """Compare the trained model of `run_dir` with `artifact` (a merged directory or a .gguf); see the
    module docstring for what is compared and what fails the verdict."""
    from ..models.generate import stop_token_ids as generation_stops

    if max_new_tokens < 1:
        raise TunelabError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    chosen = PROMPTS if prompts is None else prompts
    if not chosen:
        raise TunelabError("verify needs at least one prompt")
    run_dir, artifact = Path(run_dir), Path(artifact)
    source = read_run(run_dir)
    with _no_progress_bars():
        model, tokenizer = load_trained(source, device)
        trained = _Transformers(model)
        # what evaluation stops on: the template's end-of-turn token(s), the eos, the generation eos
        trained_stops = generation_stops(model, tokenizer)
        opened = _open_artifact(artifact, device, tokenizer)
        relative = TOLERANCES[opened.precision]
        checks = [_compare_prompt(p, tokenizer, trained, opened, trained_stops, relative, max_new_tokens)
                  for p in chosen]
    result = VerifyResult(
        run_dir=run_dir, artifact=artifact, artifact_kind=opened.kind, engine=opened.engine,
        precision=opened.precision, tolerance=relative,
        prompt_source=PROMPT_SOURCE if prompts is None else "prompts given by the caller",
        prompts=checks, agreement=sum(c.agree for c in checks) / len(checks),
        max_logit_diff=max(c.max_logit_diff for c in checks),
        differences=metadata_differences(source, tokenizer, opened, trained_stops),
    )
    result.reasons = [str(d) for d in result.differences]
    for i, check in enumerate(checks, 1):
        if check.max_logit_diff > check.limit:
            result.reasons.append(f"prompt {i}: largest logit difference {check.max_logit_diff:.3g} is above the "
                                  f"limit {check.limit:.3g} for {opened.precision} weights")
        if not check.agree and not check.near_tie:
            result.reasons.append(f"prompt {i}: greedy outputs differ ({check.note})")
    result.verdict = "fail" if result.reasons else "pass"
    return result


@contextlib.contextmanager
def _no_progress_bars():
    """transformers' weight-loading bars would tear through the CLI's output."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
