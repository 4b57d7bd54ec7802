"""Serving a model and its adapters: an OpenAI-compatible API (FastAPI) over a continuous-batching engine,
with API keys, request validation, Prometheus metrics, a request log and stored feedback.

Modules: engine (the interface every engine implements: requests, streamed deltas, shared pieces), batching
(the transformers engine: continuous batching, several LoRA adapters mixed in one batch on one base), served
(which adapters can be served on a base, checked), engines (the registry and load_engine), llamacpp and
vllm_engine (the optional engines), app (the HTTP API) and metrics.
"""
