"""The llama.cpp engine: a GGUF model on the CPU through the llama-cpp-python binding.

The base is a .gguf file (or a bundled model, whose GGUF ships in a package); a model directory is
refused with the command that exports a GGUF. The chat template is the GGUF's own
(`tokenizer.chat_template`, which `tunelab export gguf` writes from the training template), rendered by
the Hugging Face tokenizer read from the same GGUF, so prompts tokenize exactly as llama.cpp's vocabulary
says. Adapters are GGUF LoRA files (llama.cpp's convert_lora_to_gguf.py writes them); each gets its own
Llama object over the same memory-mapped base file. A PEFT run directory is refused with what to do.

llama.cpp's Python binding runs one sequence per Llama object, so requests are served one at a time by
one worker thread (max_batch does not apply). Tokens come from `Llama.generate`, and go through the same
Generation/TextTracker as the transformers engine, so end-of-turn tokens, stop strings, max_tokens and
streamed text behave identically across engines.
"""

from __future__ import annotations

import logging
import queue
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .engine import EngineBase, Generation, GenerationRequest, Stream

log = logging.getLogger(__name__)
INSTALL = "pip install llama-cpp-python"
MAX_CONTEXT = 8192


def _llama_class() -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise TunelabError(f"engine 'llama.cpp' needs the llama-cpp-python package ({exc}); install it with: "
                           f"{INSTALL} (or use --engine transformers)") from None
    return Llama


def base_gguf(base: str, workdir: Path) -> Path:
    """The GGUF file behind `base`: a .gguf path, a directory holding one, or a bundled model's."""
    from ..models.registry import resolve

    ref = resolve(base)
    if ref.kind == "gguf":
        assert ref.path is not None
        return ref.path
    if ref.kind == "bundled":
        assert ref.bundled is not None
        return ref.bundled.locate_gguf(workdir)
    raise TunelabError(f"engine 'llama.cpp' serves GGUF files, and {base} is a {ref.kind} model; export one with "
                       "`tunelab export gguf RUN --out FILE.gguf` and pass --model FILE.gguf, or use --engine "
                       "transformers")


def lora_gguf(name: str, path: Path) -> Path:
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise TunelabError(f"adapter '{name}' ({path}): engine 'llama.cpp' needs a LoRA adapter in GGUF format (llama.cpp's "
                       "convert_lora_to_gguf.py writes one from a PEFT run), or merge the run into a GGUF with "
                       "`tunelab export gguf RUN --out FILE.gguf` and serve that as --model")


class LlamaCppEngine(EngineBase):
    kind = "llama.cpp"

    def __init__(self, llms: dict[str, Any], tokenizer: Any, base_name: str, context: int,
                 cleanup: Path | None = None, notes: list[str] | None = None):
        from ..models.generate import _single_token_stops
        from ..models.templates import stop_token_ids

        self._llms = llms  # served name -> Llama (base name first)
        super().__init__(tokenizer, base_name, [n for n in llms if n != base_name], context, notes)
        self._cleanup = cleanup
        self._single_token_stops = _single_token_stops
        # the template's end-of-turn token(s), the tokenizer's eos and the GGUF's own eos
        eos = [tokenizer.eos_token_id, *(llm.token_eos() for llm in llms.values())]
        self.stop_token_ids = set(stop_token_ids(tokenizer)) | {int(e) for e in eos if e is not None and e >= 0}
        if not self.stop_token_ids:
            raise TunelabError("the GGUF's tokenizer has no end-of-sequence token; generation could never stop")
        self._queue: queue.Queue[Generation | None] = queue.Queue()
        self._lock = threading.Lock()
        self._running = 0
        self._counters = {"tokens_generated": 0, "requests_finished": 0}
        self._thread = threading.Thread(target=self._run, name="tunelab-llamacpp", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Stream:
        stream, max_new = self._open(request)
        stops = self.stop_token_ids | self._single_token_stops(self.tokenizer, request.stop)
        self._queue.put(Generation(stream, request, max_new, stops, self.tokenizer))
        return stream

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"queue_depth": float(self._queue.qsize()), "batch_size": float(self._running), "max_batch": 1.0,
                    **{k: float(v) for k, v in self._counters.items()}}

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        for llm in self._llms.values():
            close = getattr(llm, "close", None)
            if callable(close):
                close()
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)

    def _run(self) -> None:
        while (gen := self._queue.get()) is not None:
            if gen.stream.cancelled:
                gen.finish("cancelled")
                continue
            with self._lock:
                self._running = 1
            try:
                self._generate(gen)
            except Exception as exc:  # llama.cpp failures end this request only
                log.exception("llama.cpp generation failed")
                gen.finish("error", error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._running = 0
                    self._counters["requests_finished"] += 1
        while not self._queue.empty():  # closed: whatever still waits is told so
            left = self._queue.get_nowait()
            if left is not None:
                left.finish("error", error="the engine was closed")

    def _generate(self, gen: Generation) -> None:
        req = gen.request
        llm = self._llms[req.model]
        if req.temperature > 0:
            llm.set_seed(req.seed if req.seed is not None else secrets.randbits(31))
        # temp 0 is llama.cpp's greedy sampler; top_k 0 and min_p 0 switch off what the OpenAI API has not
        tokens = llm.generate(req.prompt_ids, temp=req.temperature, top_p=req.top_p, top_k=0, min_p=0.0,
                              repeat_penalty=1.0, reset=True)
        for tok in tokens:
            if gen.stream.cancelled:
                gen.finish("cancelled")
                return
            with self._lock:
                self._counters["tokens_generated"] += 1
            if not gen.advance(int(tok)):
                return


def load_llamacpp_engine(base: str, adapters: dict[str, Path], *, device: str = "auto", max_batch: int = 32,
                         dtype: str = "auto") -> LlamaCppEngine:
    """llama.cpp over `base`'s GGUF (CPU; `dtype` is the GGUF's own, `max_batch` does not apply)."""
    from transformers import AutoTokenizer

    from ..models.gguf_meta import read_gguf_header
    from ..models.loading import resolve_device
    from ..models.registry import resolve
    from ..models.templates import ensure_chat_template
    from . import served

    Llama = _llama_class()
    if resolve_device(device) != "cpu":
        log.info("engine 'llama.cpp' runs on the CPU here; device %s is not used", device)
    workdir = Path(tempfile.mkdtemp(prefix="tunelab-llamacpp-"))
    try:
        gguf = base_gguf(base, workdir)
        name = served.served_name(resolve(base))
        loras = {}
        for served_as, path in adapters.items():
            served.check_adapter_name(served_as, [name, *loras])
            loras[served_as] = lora_gguf(served_as, path)
        # the model's own context, capped: llama.cpp allocates the whole KV cache up front
        context = min(int(read_gguf_header(gguf).arch_value("context_length", 4096) or 4096), MAX_CONTEXT)
        llms = {name: Llama(model_path=str(gguf), n_ctx=context, verbose=False)}
        for served_as, lora in loras.items():
            llms[served_as] = Llama(model_path=str(gguf), n_ctx=context, lora_path=str(lora), verbose=False)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:
            raise TunelabError(f"cannot read the tokenizer inside {gguf}: {exc}") from None
        template = (llms[name].metadata or {}).get("tokenizer.chat_template")
        if template:
            tokenizer.chat_template = template
        ensure_chat_template(tokenizer)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    notes = [] if max_batch == 1 else ["engine 'llama.cpp' serves one request at a time; max_batch does not apply"]
    return LlamaCppEngine(llms, tokenizer, name, context, cleanup=workdir, notes=notes)
