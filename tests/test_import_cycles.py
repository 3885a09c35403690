"""No import circle inside ``diffusion_notes``: the graph "module A imports module B" has no cycle.

Every module of the package is found with ``pkgutil.walk_packages`` and its imports are read from
the source with ``ast`` (nothing is executed). Which imports count as edges A -> B:

* every ``import`` / ``from ... import`` statement in A, at module level **and inside functions or
  classes**. A lazy import only postpones a circle to the first call; it is still a dependency in
  both directions, and it is how such circles stay hidden (the checkpoint readers once imported
  ``StableDiffusionConfig`` inside their functions from ``stable_diffusion``, which imported them).
  Only imports under ``if TYPE_CHECKING:`` are left out: they never run.
* ``from P import name`` is an edge to ``P.name`` when that is a module of the package (``from .
  import detect``), else to ``P`` itself (a name defined or re-exported by ``P/__init__.py``).
* The parent packages Python runs before a module (``diffusion_notes/__init__.py`` before
  ``diffusion_notes.checkpoints.io``) are not edges: every module would otherwise depend on the
  package root, whose lazy ``__getattr__`` reaches the whole engine.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import diffusion_notes

PACKAGE = "diffusion_notes"


def package_modules() -> dict[str, Path]:
    """``{module name: source file}`` for the package and every module and subpackage in it."""
    modules = {PACKAGE: Path(diffusion_notes.__file__)}
    for info in pkgutil.walk_packages(diffusion_notes.__path__, prefix=PACKAGE + "."):
        spec = info.module_finder.find_spec(info.name.rpartition(".")[2])
        modules[info.name] = Path(spec.origin)
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node at any depth, except inside ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = node.orelse
        stack.extend(children)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` (source ``path``) imports (the edges of the docstring)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
            continue
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source not in modules:
            continue
        for alias in node.names:
            found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search, three colours)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert {"diffusion_notes.stable_diffusion", "diffusion_notes.checkpoints.single_file",
            "diffusion_notes.checkpoints.diffusers_folder", "diffusion_notes.models.config"} <= set(graph)
    # lazy imports count: from_single_file imports the reader inside the method
    assert "diffusion_notes.checkpoints.single_file" in graph["diffusion_notes.stable_diffusion"]


def test_find_cycle_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
