"""The library's shape: no import cycles, no imports hidden inside functions, nothing from experiments/."""

import ast

from tests.conftest import ROOT

LIBRARY = ROOT / "irnn_jax"
# Imports a function may make for itself: optional or slow dependencies that only one path needs.
LAZY_ALLOWED = {"tensorflow_datasets", "matplotlib", "matplotlib.pyplot", "tqdm"}


def _imports(path):
    """(module-level irnn_jax imports, imports inside functions) of one file."""
    tree = ast.parse(path.read_text())
    top, inner = set(), []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        if isinstance(node, ast.ImportFrom) and node.module == "irnn_jax":
            names = [f"irnn_jax.{a.name}" for a in node.names]
        if node.col_offset == 0:
            top |= {n for n in names if n.startswith("irnn_jax.")}
        else:
            inner += names
    return top, inner


def test_no_import_cycles_and_no_hidden_imports():
    graph, hidden = {}, {}
    for path in sorted(LIBRARY.glob("*.py")):
        name = f"irnn_jax.{path.stem}"
        top, inner = _imports(path)
        graph[name] = top - {name}
        hidden[name] = [n for n in inner if n not in LAZY_ALLOWED]
        assert not any(n.startswith("experiments") for n in top | set(inner)), name
    assert {k: v for k, v in hidden.items() if v} == {}
    state = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import cycle: " + " -> ".join([*trail, node])
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*trail, node])
        state[node] = "done"

    for node in graph:
        visit(node, [])
    assert graph["irnn_jax.data"] == set()  # files only
    assert "irnn_jax.loop" not in graph["irnn_jax.train"]


def test_every_library_module_stays_under_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in LIBRARY.glob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 400} == {}
