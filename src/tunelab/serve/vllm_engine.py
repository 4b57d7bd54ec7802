"""The vLLM engine: a CUDA GPU, vLLM's own continuous batching and multi-LoRA.

The base loads as tunelab.models resolves it (a bundled GGUF is converted once to safetensors, as for
training); each adapter is checked as the transformers engine checks it (serve.served: LoRA only, trained
on this base, its chat template) and served through a `LoRARequest` of its own, so requests for several
adapters share the base weights and a batch. vLLM runs on an asyncio event loop in a background thread;
`submit` hands it a request and returns at once, and the loop pushes Deltas onto the request's Stream.
vLLM applies stop strings and end-of-turn tokens itself (the same ones the transformers engine stops on).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .engine import Delta, EngineBase, GenerationRequest, Stream

log = logging.getLogger(__name__)
INSTALL = "pip install vllm"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
FINISH = {"stop": "stop", "length": "length", "abort": "cancelled"}


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise TunelabError(f"engine 'vllm' needs the vllm package ({exc}); install it with: {INSTALL} on a machine "
                           "with a CUDA GPU (or use --engine transformers)") from None
    return vllm


class VllmEngine(EngineBase):
    kind = "vllm"

    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop, tokenizer: Any, base_name: str,
                 loras: dict[str, Any], context: int, max_batch: int, stop_ids: set[int], notes: list[str]):
        super().__init__(tokenizer, base_name, list(loras), context, notes)
        self._engine = engine
        self._loop = loop
        self._loras = loras  # served name -> LoRARequest
        self._max_batch = max_batch
        self._stop_ids = stop_ids
        self._lock = threading.Lock()
        self._in_flight = 0
        self._counters = {"tokens_generated": 0, "requests_finished": 0}

    def submit(self, request: GenerationRequest) -> Stream:
        stream, max_new = self._open(request)
        with self._lock:
            self._in_flight += 1
        asyncio.run_coroutine_threadsafe(self._serve(stream, request, max_new), self._loop)
        return stream

    def stats(self) -> dict[str, float]:
        with self._lock:
            running = min(self._in_flight, self._max_batch)
            return {"queue_depth": float(self._in_flight - running), "batch_size": float(running),
                    "max_batch": float(self._max_batch), **{k: float(v) for k, v in self._counters.items()}}

    def close(self) -> None:
        shutdown = getattr(self._engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _serve(self, stream: Stream, req: GenerationRequest, max_new: int) -> None:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                                stop=list(req.stop) or None, stop_token_ids=sorted(self._stop_ids))
        text_sent, ids_sent = 0, 0
        try:
            outputs = self._engine.generate({"prompt_token_ids": list(req.prompt_ids)}, params, stream.id,
                                            lora_request=self._loras.get(req.model))
            async for out in outputs:
                if stream.cancelled:
                    aborted = self._engine.abort(stream.id)
                    if asyncio.iscoroutine(aborted):
                        await aborted
                    stream.push(Delta("", [], "cancelled", stream.prompt_tokens, ids_sent))
                    return
                done = out.outputs[0]
                new_ids = [t for t in done.token_ids[ids_sent:] if t not in self._stop_ids]
                reason = FINISH.get(done.finish_reason, "stop") if done.finish_reason else None
                with self._lock:
                    self._counters["tokens_generated"] += len(done.token_ids) - ids_sent
                stream.push(Delta(done.text[text_sent:], new_ids, reason, stream.prompt_tokens, len(done.token_ids)))
                text_sent, ids_sent = len(done.text), len(done.token_ids)
            if not stream.finished:
                stream.push(Delta("", [], "stop", stream.prompt_tokens, ids_sent))
        except Exception as exc:
            log.exception("vLLM generation failed")
            stream.push(Delta("", [], "error", stream.prompt_tokens, ids_sent, f"{type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                self._in_flight -= 1
                self._counters["requests_finished"] += 1


def _lora_rank(configs: list[dict[str, Any]]) -> int:
    top = max((int(c.get("r") or 8) for c in configs), default=8)
    for rank in LORA_RANKS:
        if rank >= top:
            return rank
    raise TunelabError(f"engine 'vllm' serves LoRA ranks up to {LORA_RANKS[-1]}; an adapter has rank {top}")


def load_vllm_engine(base: str, adapters: dict[str, Path], *, device: str = "auto", max_batch: int = 32,
                     dtype: str = "auto") -> VllmEngine:
    """vLLM on the GPU over `base` (a model directory after tunelab.models resolves it) and LoRA `adapters`."""
    import torch

    from ..models.loading import load_tokenizer, resolve_device, resolve_dtype
    from ..models.registry import model_path, resolve
    from ..models.templates import stop_token_ids
    from . import served

    vllm = _vllm()
    if not torch.cuda.is_available():
        raise TunelabError("engine 'vllm' needs a CUDA GPU and none is visible here; use --engine transformers "
                           "(CPU or GPU) or --engine llama.cpp (a GGUF on the CPU)")
    target = resolve_device(device)
    if not target.startswith("cuda"):
        raise TunelabError(f"engine 'vllm' runs on a CUDA GPU, not on device '{device}'")
    ref = resolve(base)
    name = served.served_name(ref)
    checked = served.check_adapters(base, name, adapters)
    directory = model_path(ref)
    tokenizer = load_tokenizer(ref)
    notes = served.choose_template(tokenizer, {n: d for n, (d, _) in checked.items()})
    from vllm.lora.request import LoRARequest

    loras = {n: LoRARequest(n, i + 1, str(d)) for i, (n, (d, _)) in enumerate(checked.items())}
    args = vllm.AsyncEngineArgs(
        model=str(directory), tokenizer=str(directory), dtype=resolve_dtype(dtype, target), max_num_seqs=max_batch,
        enable_lora=bool(loras), max_loras=max(1, len(loras)), max_lora_rank=_lora_rank([c for _, c in checked.values()]),
    )
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="tunelab-vllm", daemon=True).start()

    async def build() -> Any:
        return vllm.AsyncLLMEngine.from_engine_args(args)

    try:
        engine = asyncio.run_coroutine_threadsafe(build(), loop).result()
        model_config = getattr(engine, "model_config", None)
        context = int(getattr(model_config, "max_model_len", 0) or 0)
        if not context:  # an older vLLM that does not say: the checkpoint's own
            from transformers import AutoConfig

            text_config = AutoConfig.from_pretrained(directory).get_text_config()
            context = int(getattr(text_config, "max_position_embeddings", 0) or 2048)
    except Exception as exc:
        loop.call_soon_threadsafe(loop.stop)
        if isinstance(exc, TunelabError):
            raise
        raise TunelabError(f"vLLM could not start on {directory}: {exc}") from None
    stops = set(stop_token_ids(tokenizer)) | ({tokenizer.eos_token_id} - {None})
    return VllmEngine(engine, loop, tokenizer, name, loras, context, max_batch, stops, notes)
