"""`tunelab export gguf`: a training run (or a Hugging Face model directory) as a GGUF file with its
Ollama Modelfile, checked against the trained model.

A run is merged first (merge.merge_run, float32, into a temporary directory removed afterwards) so the
GGUF is quantized once, from full-precision merged weights, and carries the run's own chat template.
Then the Modelfile is written from the template the GGUF holds, and verify.verify compares the GGUF with
the trained model (base + adapter as evaluated) on the fixed prompt set: the verdict is part of the result,
and a failed check is reported, not hidden. A plain model directory has no trained model to compare with:
it is written as it is, and verify is skipped unless a run is named.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .gguf import GgufResult, write_gguf
from .ollama import modelfile_params, write_modelfile


@dataclass
class GgufExport:
    gguf: GgufResult
    modelfile: Path | None
    run_dir: Path | None
    verify: Any = None  # verify.VerifyResult, when there was a run to compare with
    messages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.gguf.to_dict(), "modelfile": str(self.modelfile) if self.modelfile else None,
                "run_dir": str(self.run_dir) if self.run_dir else None, "messages": list(self.messages),
                "verify": self.verify.to_dict() if self.verify is not None else None}


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory (config.json and safetensors weights), not a training run."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def export_gguf(source: Path, out: Path, *, quant: str = "f16", name: str | None = None,
                modelfile: bool = True, verify: bool = True, run: Path | None = None) -> GgufExport:
    """Write `source` (a training run directory, or a model directory) as the GGUF file `out`.

    run: the training run a model directory was merged from, to verify against (a run source is its own).
    """
    from .gguf import _check_quant

    source, out = Path(source), Path(out)
    _check_quant(quant)  # a bad name is an error before minutes of merging
    if not source.is_dir():
        raise TunelabError(f"{source}: no such directory (give a training run or a model directory)")
    messages: list[str] = []
    if is_model_dir(source):
        result = write_gguf(source, out, quant=quant, name=name)
        generation = _generation_settings(source)
    else:
        from .merge import merge_run

        run = source
        with tempfile.TemporaryDirectory(prefix="tunelab-merge-", dir=_scratch_dir(out)) as tmp:
            merged = merge_run(source, Path(tmp) / "merged", dtype="float32", verify=False)
            messages += merged.messages
            result = write_gguf(merged.out, out, quant=quant, name=name or source.name)
            generation = _generation_settings(merged.out)
    mf = None
    if modelfile:
        mf = write_modelfile(result.path, chat_template=result.chat_template,
                             stop_tokens=result.template["stop_tokens"], params=modelfile_params(generation))
    done = GgufExport(gguf=result, modelfile=mf, run_dir=run, messages=messages)
    if verify and run is not None:
        from .verify import verify as verify_artifact

        done.verify = verify_artifact(run, result.path)
        done.messages.append(f"verify: {done.verify.verdict}"
                             + (f" ({'; '.join(done.verify.reasons)})" if done.verify.reasons else ""))
    elif verify:
        done.messages.append("verify skipped: a model directory has no trained model to compare with "
                             "(give --run RUN, the run it was merged from)")
    return done


def _generation_settings(model_dir: Path) -> dict[str, Any]:
    """The sampling defaults a model directory declares (generation_config.json), for the Modelfile."""
    path = model_dir / "generation_config.json"
    generation = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return {k: generation.get(k) for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
                                           "max_new_tokens")}


def _scratch_dir(out: Path) -> str | None:
    """Merge next to the output when its folder exists (same disk as the result), else in the temp dir."""
    parent = out.resolve().parent
    return str(parent) if parent.is_dir() else None
