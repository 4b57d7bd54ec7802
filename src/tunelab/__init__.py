"""tunelab: fine-tune open LLMs, measure them against retrieval, and serve them, with one tool."""

__version__ = "0.1.0"

from . import noise as _noise

_noise.install()
