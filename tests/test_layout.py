"""The package's shape: no import cycle among dnnlab's modules (module-level imports; in-function ones aside)."""
from __future__ import annotations

import ast
from pathlib import Path

import dnnlab

ROOT = Path(dnnlab.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """dnnlab module → the dnnlab modules it imports at module level."""
    names = {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dnnlab"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("dnnlab"))
        graph[name] = deps & names.keys() - {name}
    return graph


def test_no_import_cycle():
    graph, state, cycles = module_imports(), {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(" → ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_layer_kinds_are_declared_only_in_models():
    """The anatomy's layer kinds (WEIGHTED, BATCH_NORMS, DROPOUTS) are tuples in dnnlab.models alone: no other module
    holds a tuple of torch layer classes naming one of them (a stacker's own table of activations is its business)."""
    from dnnlab import models

    anatomy = {kind.__name__ for kind in (*models.WEIGHTED, *models.BATCH_NORMS, *models.DROPOUTS)}

    def is_layer_tuple(value: ast.AST) -> bool:
        return isinstance(value, ast.Tuple) and bool(value.elts) and all(
            isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "nn" for e in value.elts
        ) and any(e.attr in anatomy for e in value.elts)

    found = [f"{path.relative_to(ROOT.parent)}: {ast.unparse(node.targets[0])}"
             for path in ROOT.rglob("*.py") if path.name != "models.py"
             for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.Assign) and is_layer_tuple(node.value)]
    assert found == []


def test_tiny_runs_come_from_one_source():
    """A test module's run settings derive from helpers.configs.tiny, not a hand-written list of its own."""
    tests = Path(__file__).parent
    found = [f"{path.name}: {ast.unparse(node.targets[0])}"
             for path in tests.glob("test_*.py") for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.Assign) and isinstance(node.value, ast.List)
             and any(isinstance(e, ast.Constant) and str(e.value).startswith("data.limit=") for e in node.value.elts)]
    assert found == []
