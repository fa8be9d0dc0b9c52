"""The house stays as built: no import cycle among matmeta's modules, nothing imports a higher layer.

Every ``import``/``from ... import`` of a matmeta module counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "matmeta"

#: Layers, bottom to top (see the README's "Layout"). A module may import its own layer or lower ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "matmeta",
        "matmeta.errors",
        "matmeta.atomic",
        "matmeta.console",
        "matmeta.recipes",
        "matmeta.checkpoint",
        "matmeta.guards",
    ),
    ("matmeta.geometry", "matmeta.cif", "matmeta.structure_checks", "matmeta.io"),
    (
        "matmeta.graphs",
        "matmeta.families",
        "matmeta.prototypes",
        "matmeta.perovskite_network",
        "matmeta.tasks",
        "matmeta.elements",
        "matmeta.conformal",
    ),
    ("matmeta.store", "matmeta.meta", "matmeta.models", "matmeta.graph_reading"),
    ("matmeta.predict", "matmeta.design", "matmeta.kinetics", "matmeta.explain", "matmeta.federate"),
    ("matmeta.bench", "matmeta.runs"),
    ("matmeta.commands", "matmeta.cli"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """matmeta modules imported anywhere in ``path`` (``from a.b import c`` counts ``a.b.c`` if that is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("matmeta"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found.update(subs or {node.module})
    return found


def layer_of(module: str) -> int:
    best = -1
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "matmeta" and module.startswith(prefix + ".")):
                best = level
    assert best >= 0, f"{module} is in no layer: add it to LAYERS"
    return best


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) - {name} for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_nothing_imports_upward() -> None:
    upward = [
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in sorted(graph().items())
        for b in sorted(targets)
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "\n".join(upward)


def test_command_modules_do_not_import_each_other() -> None:
    edges = graph()
    crossing = [
        (a, b) for a in edges if a.startswith("matmeta.commands.") for b in edges[a] if b.startswith("matmeta.commands")
    ]
    assert not crossing, crossing


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("matmeta.io") < layer_of("matmeta.predict.predictor")
