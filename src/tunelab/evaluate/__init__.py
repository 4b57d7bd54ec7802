"""Evaluation: metrics, multiple-choice benchmarks and the eval runner (generation is tunelab.models.generate).

Names are imported lazily so `import tunelab.evaluate` (done by the CLI at start-up) does not pull
in torch and transformers before a command needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalResult": "runner",
    "load_eval_records": "runner",
    "render_eval": "runner",
    "run_eval": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
