"""Serving a model and its adapters: an OpenAI-compatible API (FastAPI) over a continuous-batching engine,
with API keys, request validation, Prometheus metrics, a request log and stored feedback.

Modules: engine (the batching scheduler over tunelab's model code, several adapters on one base), app (the
HTTP API), metrics, and the optional llama.cpp / vLLM engines.
"""
