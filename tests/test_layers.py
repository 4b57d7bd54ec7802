"""Imports point down, and no modules import each other.

The package is read with `ast` (nothing is imported), every `import` and `from ... import` is an edge,
including those inside functions (a lazy import still ties the modules together, it only delays when)
and under `if TYPE_CHECKING` (a type that has to come from a higher layer is a dependency too).
`from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg` (its __init__).

The checks:
- no import cycle between modules (a loop makes each half untestable alone and start-up order-sensitive);
- no import from a lower layer to a higher one, in the order of LAYERS (the pipeline: shared services at
  the bottom, the stages above them, the orchestration above those, the CLI on top), and none from one
  stage to another (what two stages share goes down a layer). Other modules of one layer may import each
  other, but not in a cycle;
- every top-level module has a layer, and every allowed exception still happens (else it must go).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tunelab"

# Lowest first. Each entry names top-level modules or packages of tunelab. Read off the code, not wished:
# - the shared services (models: loading, generation, adapters; documents: ingestion, chunking; llm: the
#   judge/teacher backends, whose local backend generates through models) take plain arguments, never a
#   config section, so they sit below config; config sits above them because its schema checks a backend
#   spec with llm's own parser;
# - evaluate is a stage (`tunelab eval`) and also what the other stages score with (synth's judge filter,
#   training's generation eval, retrieval metrics), so it sits below them.
LAYERS: list[tuple[str, ...]] = [
    # base: import nothing of tunelab but each other (noise.py, third-party log filters, is new on main)
    ("errors", "io", "paths", "noise", "secrets", "digest"),
    ("models", "documents"),  # shared services on models and on documents
    ("llm",),  # LLM backends for the judge and the teacher
    ("config",),  # the experiment schema
    ("data", "track", "review"),  # datasets, tracking and human ratings, used by the stages and the app
    ("evaluate",),  # scoring
    ("synth", "train", "rag"),  # the stages that make things: data, a tuned model, an index
    ("export", "serve"),  # getting a trained model out: files, the Hub, a server
    ("compare", "pipeline", "quickstart", "sweep"),  # orchestration of the stages
    ("ui",),  # the review web app, over the comparisons (compare) and the ratings (review)
    ("cli",),  # parses and prints
]
# Peers that must not import one another at all: what two stages share belongs in a layer below them.
STAGES = ("synth", "train", "rag")

# Known exceptions, each with the reason it is still here. An entry is debt: when the import it names is
# gone, test_allow_lists_hold_only_what_still_happens fails until the entry is removed too.
ALLOWED_CYCLES: dict[frozenset[str], str] = {}
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    # a package's __init__ is its own anchor for `.`; a plain module's anchor is its package
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the tunelab modules it imports (anywhere in its body)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.add(sub if sub in modules else source)
        edges = set()
        for target in targets:
            # `import tunelab.a.b` where only tunelab.a is a module of ours (b an attribute): keep the longest
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("tunelab") and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer_of(module: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if _top(module) in names:
            return i
    return None


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports that go up a layer, or across from one stage to another."""
    return sorted((src, dst) for src, dsts in graph.items() for dst in dsts
                  if src != "tunelab" and dst != "tunelab"
                  and ((_layer_of(src) or 0) < (_layer_of(dst) or 0)
                       or (_top(src) != _top(dst) and _top(src) in STAGES and _top(dst) in STAGES)))


def test_every_module_has_a_layer():
    unplaced = sorted({_top(m) for m in _modules() if m != "tunelab" and _layer_of(m) is None})
    assert not unplaced, f"place these tunelab modules in a layer of LAYERS: {unplaced}"


def test_no_import_cycles():
    found = [c for c in _cycles(import_graph()) if frozenset(c) not in ALLOWED_CYCLES]
    assert not found, "modules that import each other (directly or round a loop): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    found = [e for e in _upward(import_graph()) if e not in ALLOWED_UPWARD]
    assert not found, "imports from a lower layer to a higher one, or from one stage to another: " + "; ".join(
        f"{a} -> {b}" for a, b in found)


def test_allow_lists_hold_only_what_still_happens():
    # an exception that no longer happens must go, or it would silently allow the next one
    graph = import_graph()
    cycles = {frozenset(c) for c in _cycles(graph)}
    upward = set(_upward(graph))
    gone = [sorted(c) for c in ALLOWED_CYCLES if c not in cycles] + [e for e in ALLOWED_UPWARD if e not in upward]
    assert not gone, f"these allowed exceptions no longer happen; remove them from the allow-lists: {gone}"


@pytest.mark.parametrize(("source", "expected"), [
    ("import tunelab.models.loading\n", {"tunelab.models.loading"}),
    ("from . import loading\n", {"tunelab.models.loading"}),
    ("from .loading import load_model\n", {"tunelab.models.loading"}),
    ("from ..errors import TunelabError\n", {"tunelab.errors"}),
    ("from .. import io\n", {"tunelab.io"}),
    ("def f():\n    from ..evaluate.runner import run_eval\n", {"tunelab.evaluate.runner"}),
    ("from ..models import load_model\n", {"tunelab.models"}),
    ("import os\nfrom typing import Any\n", set()),
])
def test_the_graph_sees_every_kind_of_import(tmp_path, monkeypatch, source, expected):
    pkg = tmp_path / "tunelab"
    for name in ("__init__.py", "errors.py", "io.py", "evaluate/__init__.py", "evaluate/runner.py",
                 "models/__init__.py", "models/loading.py"):
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text("")
    (pkg / "models" / "probe.py").write_text(source)
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    assert import_graph()["tunelab.models.probe"] == expected


def test_a_loop_an_upward_import_and_a_stage_importing_a_stage_are_found(tmp_path, monkeypatch):
    pkg = tmp_path / "tunelab"
    for name in ("__init__.py", "models/__init__.py", "compare/__init__.py", "rag/__init__.py",
                 "synth/__init__.py", "synth/chunk.py"):
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text("")
    (pkg / "models" / "a.py").write_text("def f():\n    from ..compare import b\n")
    (pkg / "compare" / "b.py").write_text("from ..models.a import f\n")
    (pkg / "rag" / "index.py").write_text("from ..synth.chunk import chunk_documents\n")
    monkeypatch.setitem(globals(), "PACKAGE", pkg)
    graph = import_graph()
    assert _cycles(graph) == [["tunelab.compare.b", "tunelab.models.a"]]
    assert _upward(graph) == [("tunelab.models.a", "tunelab.compare.b"), ("tunelab.rag.index", "tunelab.synth.chunk")]
