"""The training package's structure: its modules import each other without cycles (imports inside
functions included), it loads models only through the model layer's loader (tunelab.models.loading),
and setup hands a run its data as named fields."""

from __future__ import annotations

import ast
from pathlib import Path

import tunelab.train

TRAIN = Path(tunelab.train.__file__).parent


def _trees() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(TRAIN.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """The sibling modules a train module imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunelab.train."):
            found.add(node.module.split(".")[2])
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if found := visit(nxt, path + [node]):
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        if found := visit(start, []):
            return found
    return None


def test_train_modules_import_without_cycles():
    graph = {name: _imports(tree) - {name} for name, tree in _trees().items() if name != "__init__"}
    assert {"setup", "single"} <= graph["stages"] and "run" not in graph["stages"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_one():
    assert _cycle({"run": {"stages"}, "stages": {"setup", "run"}, "setup": set()}) == ["run", "stages", "run"]
    assert _cycle({"run": {"stages"}, "stages": {"setup"}, "setup": set()}) is None


def test_train_loads_models_only_through_the_model_layer():
    direct = [f"{name}.py:{node.lineno}" for name, tree in _trees().items() for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "from_pretrained"]
    assert direct == []


def test_setup_hands_the_run_its_data_as_named_fields(make_config):
    from tunelab.train.setup import TrainData, load_data, load_tokenizer_for

    config = make_config("data", data={"split": {"train": 0.75, "validation": 0.25}})
    data = load_data(config, load_tokenizer_for(config), None)
    assert isinstance(data, TrainData)
    assert data.train and data.val and data.val_records
    assert data.train_stats["examples"] == len(data.train) and data.val_stats["examples"] == len(data.val)
    assert data.dataset_hash == data.manifest["dataset_hash"]
    assert data.plan is None and data.mixture is None  # only a mixture plans its epochs
