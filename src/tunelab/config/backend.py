"""The config of an LLM backend call site: the judge (eval.judge, synth.judge) and the teacher
(synth.teacher) are both one backend spec plus how to call it and where its calls are cached, so
they share these fields; each adds only what is its own (the judge's parse retries, the teacher's
local batch size and threads). The YAML keys users write are the same as before."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from ..errors import TunelabError
from .base import Section


class BackendConfig(Section):
    """Which backend (tunelab.llm spec), how to call it (openai), and the call cache."""

    spec: str = Field(..., description="openai:MODEL@BASE_URL, openai:MODEL or local:MODEL[+ADAPTER].")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (openai).")
    concurrency: int = Field(4, gt=0, description="Requests in flight at once (openai).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (openai).")
    max_retries: int = Field(4, ge=0, description="Retries on timeouts, connection errors, 429 and 5xx (openai).")
    cache: bool = Field(True, description="Cache calls on disk: re-runs are free, interrupted runs resume.")
    cache_dir: Path | None = Field(None, description="Default: <tunelab home>/llm_calls.")

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, value: str) -> str:
        from ..llm import parse_spec

        try:
            parse_spec(value)
        except TunelabError as exc:
            raise ValueError(str(exc)) from None
        return value
