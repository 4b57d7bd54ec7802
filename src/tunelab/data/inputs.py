"""Input paths that stand for data files: the directory `tunelab data synth` writes.

A synth output directory (tunelab.synth.run) is recognised by its manifest.json, which carries a
`tunelab_synth` format number, and stands for the files in it:

- train.jsonl is a training input, as if it had been named itself;
- eval.jsonl becomes the held-out eval file (`--eval`, data.eval) when the manifest says the eval set is
  made of held-out sections and no eval file was named; an explicit one wins. A paraphrase eval set is
  not used this way: its questions share answers with training records by design, so the leak check
  would remove every one (evaluate it directly, as synth's own `next` steps say).

This is decided before anything else looks at the path, in particular before causal training turns
directories into documents (train/documents.py), so the synth output's JSONL files are never ingested
as text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TunelabError

SYNTH_MANIFEST = "manifest.json"
SYNTH_MARKER = "tunelab_synth"  # the key synth/run.py writes first in its manifest


def synth_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a directory `tunelab data synth` wrote, or None for any other path."""
    file = Path(path) / SYNTH_MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and SYNTH_MARKER in manifest else None


def expand_inputs(train: list[Path], eval_path: Path | None) -> tuple[list[Path], Path | None]:
    """(training files, eval file) with every synth output directory replaced by the files it holds."""
    files: list[Path] = []
    held_out: list[Path] = []
    for path in map(Path, train):
        manifest = synth_manifest(path) if path.is_dir() else None
        if manifest is None:
            files.append(path)
            continue
        if not (path / "train.jsonl").is_file():
            raise TunelabError(f"{path}: a `tunelab data synth` output without train.jsonl; run synth again")
        files.append(path / "train.jsonl")
        how = (manifest.get("eval_set") or {}).get("how")
        if how == "held_out" and (path / "eval.jsonl").is_file():
            held_out.append(path / "eval.jsonl")
    if eval_path is not None or not held_out:
        return files, eval_path
    if len(held_out) > 1:
        raise TunelabError(
            f"{len(held_out)} synth outputs each hold a held-out eval set ({', '.join(map(str, held_out))}); "
            "name the one to use with --eval (data.eval)"
        )
    return files, held_out[0]
