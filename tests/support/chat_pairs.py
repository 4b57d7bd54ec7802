"""Small question-answer sets written as chat JSONL, shared by the sweep tests and the main job's tuning tests."""

from __future__ import annotations

import json
from pathlib import Path

# twelve facts a tiny adapter can partly learn in a few steps: the answer is a function of the question
PAIRS = [(f"What is the code of item {i}?", f"Code {(i * 37) % 100} for item {i}.") for i in range(12)]


def write_pairs(path: Path, pairs) -> Path:
    """(question, answer) pairs -> a chat JSONL file of user/assistant messages."""
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
