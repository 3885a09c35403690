"""The math core stands alone: schedules, the forward process, the samplers, the sampling loop,
guidance and the Gaussian mixture never import the networks, the checkpoint readers or the pipeline.

Checked on the source with ``ast`` (no import is executed), following imports inside the package
transitively, so an indirect path (core -> helper -> models) fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusion_notes"
CORE = ["schedules", "forward", "samplers", "sampling", "guidance", "mixture"]
FORBIDDEN = ["models", "checkpoints", "pipeline", "stable_diffusion", "cli", "images", "prompts"]


def _module_file(name: str) -> Path | None:
    """The file of ``diffusion_notes.<name>`` (a module or a package's ``__init__``), None outside the package."""
    parts = name.split(".")
    if parts[0] != "diffusion_notes":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``diffusion_notes.*`` module ``path`` imports, at any depth of its code (lazy imports included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("diffusion_notes")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("diffusion_notes"):
                continue
            found.add(module)
            for alias in node.names:  # `from . import pipeline` imports a module
                if _module_file(f"{module}.{alias.name}") is not None:
                    found.add(f"{module}.{alias.name}")
    return found


def reachable(start: str) -> dict[str, str]:
    """``{module: the module that imported it}`` for everything ``start`` imports, transitively."""
    seen, queue = {start: ""}, [start]
    while queue:
        current = queue.pop()
        path = _module_file(current)
        if path is None:
            continue
        files = [path] + (sorted(path.parent.glob("*.py")) if path.name == "__init__.py" and current != "diffusion_notes" else [])
        for file in files:
            for module in imported_modules(file):
                if module not in seen:
                    seen[module] = _module_name(file)
                    queue.append(module)
    return seen


def _forbidden(module: str) -> bool:
    return any(module == f"diffusion_notes.{f}" or module.startswith(f"diffusion_notes.{f}.") for f in FORBIDDEN)


@pytest.mark.parametrize("core", CORE)
def test_the_math_core_imports_no_models_checkpoints_or_pipeline(core):
    seen = reachable(f"diffusion_notes.{core}")
    assert _module_file(f"diffusion_notes.{core}") is not None
    bad = {module: via for module, via in seen.items() if _forbidden(module)}
    assert not bad, f"diffusion_notes.{core} reaches {sorted(bad)} (e.g. {next(iter(bad))} imported by {bad[next(iter(bad))]})"


def test_the_walk_finds_what_a_module_imports():
    """The walker itself: the pipeline does reach the models and the sampling loop (so a core module
    that did the same would be caught), and relative, lazy and `from . import x` imports all count."""
    seen = reachable("diffusion_notes.pipeline")
    assert "diffusion_notes.sampling" in seen and "diffusion_notes.samplers.ddim" in seen
    assert any(m.startswith("diffusion_notes.models") for m in reachable("diffusion_notes.stable_diffusion"))
    assert "diffusion_notes.pipeline" in imported_modules(PACKAGE / "stable_diffusion.py")  # `from . import pipeline`
