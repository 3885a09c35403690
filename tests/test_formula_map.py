"""docs/formulas.md cannot drift: every function and every test it names exists.

The mechanical rule (also written at the top of docs/formulas.md):

* Only tables whose header has a ``function`` column and a ``test`` column are checked, and in them
  only what stands in backticks in those two columns. Prose outside backticks is free text.
* **function column**: each backticked token is a name, optionally followed by a call ``f(...)`` and
  arguments (ignored). ``a.b.c`` resolves if ``diffusion_notes.a.b.c`` is a module or an attribute
  chain from one, or if ``a.b.c`` is an attribute chain from any module of the package
  (``NoiseSchedule.snr``, ``models.vq.VectorQuantizer``). ``.attr`` (a leading dot) is an
  attribute of the class named last before it in the same table. An attribute of a class exists when
  the class has it, declares it as a dataclass field, or assigns ``self.attr`` in its source.
  Tokens that are string literals (``"cosine"``) are not names and are skipped.
* **test column**: each backticked token is a test. ``file.py::name`` (or ``dir/file.py::name``)
  is a ``def name`` in a file of that name under ``tests/``; a bare ``test_name`` is a test function
  in the file named last before it in the same cell, or, if the cell names none, in any file under
  ``tests/``; a path ``tests/.../x.py`` (or ``x.py``) must exist. A parametrisation suffix
  ``[...]`` is ignored. Every row names at least one test this way.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from dataclasses import fields, is_dataclass
from functools import lru_cache
from pathlib import Path

import pytest

import diffusion_notes

ROOT = Path(__file__).resolve().parents[1]
FORMULAS = ROOT / "docs" / "formulas.md"
TESTS = ROOT / "tests"

_NAME = re.compile(r"^\.?[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*")


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip() for c in cells[1:-1]]


def _backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _rows():
    """(line number, table header, cells) for every data row of the checked tables."""
    header = None
    for number, line in enumerate(FORMULAS.read_text().splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = _split_row(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        if "function" in header and "test" in header:
            yield number, header, cells


ROWS = list(_rows())


@lru_cache(maxsize=None)
def _package_modules():
    modules = [diffusion_notes]
    for info in pkgutil.walk_packages(diffusion_notes.__path__, "diffusion_notes."):
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:  # an optional dependency missing: its names cannot be checked here
            continue
    return modules


def _has_attribute(obj, attr: str) -> bool:
    if hasattr(obj, attr):
        return True
    if inspect.isclass(obj):
        if is_dataclass(obj) and attr in {f.name for f in fields(obj)}:
            return True
        for cls in obj.__mro__:
            if cls.__module__.startswith("diffusion_notes"):
                try:
                    if re.search(rf"self\.{re.escape(attr)}\s*[:=]", inspect.getsource(cls)):
                        return True
                except (OSError, TypeError):
                    pass
    return False


def _follow(obj, parts):
    for part in parts:
        if not _has_attribute(obj, part):
            return None
        obj = getattr(obj, part, _INSTANCE_ATTRIBUTE)
    return obj


_INSTANCE_ATTRIBUTE = object()  # an attribute (dataclass field, self.x = ...) that exists only on instances


def _resolve(name: str, last_class):
    """The object ``name`` names, or None."""
    if name.startswith("."):
        if last_class is None:
            return None
        return _follow(last_class, name[1:].split("."))
    parts = name.split(".")
    for k in range(len(parts), 0, -1):  # diffusion_notes.a.b as a module, then attributes
        try:
            module = importlib.import_module("diffusion_notes." + ".".join(parts[:k]))
        except ImportError:
            continue
        found = _follow(module, parts[k:])
        if found is not None:
            return found
    for module in _package_modules():
        found = _follow(module, parts)
        if found is not None:
            return found
    return None


@lru_cache(maxsize=None)
def _test_functions(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


@lru_cache(maxsize=None)
def _test_files(file_name: str) -> tuple[Path, ...]:
    """Files under tests/ whose path ends with ``file_name`` (``test_x.py`` or ``models/test_x.py``)."""
    file_name = file_name.removeprefix("tests/")
    return tuple(p for p in TESTS.rglob("*.py") if p.relative_to(TESTS).as_posix().endswith(file_name))


def _check_test_cell(cell: str) -> tuple[list[str], int]:
    """(problems, number of tests named) for one cell of the test column."""
    problems, named, current_file = [], 0, None
    for token in _backticked(cell):
        token = token.split("[")[0].strip()
        file_part, _, func = token.partition("::")
        if file_part.endswith(".py"):
            files = _test_files(file_part)
            if not files:
                problems.append(f"test file {file_part!r} not found under tests/")
                continue
            current_file = files
            if not func:
                named += 1
                continue
        else:
            func = token
            if not re.fullmatch(r"test_[A-Za-z_0-9]+", func):
                problems.append(f"{token!r} is neither a test function name nor a test file")
                continue
        search = current_file if current_file is not None and "::" not in token and not file_part.endswith(".py") else None
        if file_part.endswith(".py"):
            search = current_file
        if search is None:
            search = tuple(TESTS.rglob("test_*.py"))
        if any(func in _test_functions(p) for p in search):
            named += 1
        else:
            where = ", ".join(p.relative_to(ROOT).as_posix() for p in search) if len(search) < 4 else "tests/"
            problems.append(f"test {func!r} not found in {where}")
    return problems, named


def test_the_map_has_rows():
    assert len(ROWS) >= 45


@pytest.mark.parametrize("number, header, cells", ROWS, ids=[f"line{n}" for n, _, _ in ROWS])
def test_every_named_test_exists(number, header, cells):
    problems, named = _check_test_cell(cells[header.index("test")])
    assert not problems, f"docs/formulas.md line {number}: " + "; ".join(problems)
    assert named >= 1, f"docs/formulas.md line {number}: the test column names no test in backticks"


def test_every_named_function_exists():
    problems, last_class, last_header = [], None, None
    for number, header, cells in ROWS:
        if header is not last_header:  # a new table: forget the class named last
            last_class, last_header = None, header
        for token in _backticked(cells[header.index("function")]):
            token = token.strip()
            if token.startswith(('"', "'")):
                continue
            match = _NAME.match(token)
            if match is None:
                problems.append(f"line {number}: {token!r} is not a name")
                continue
            name = match.group(0)
            found = _resolve(name, last_class)
            if found is None:
                problems.append(f"line {number}: {name!r} does not resolve in diffusion_notes")
            elif inspect.isclass(found):
                last_class = found
            elif not name.startswith(".") and "." in name:
                owner = _resolve(name.rsplit(".", 1)[0], last_class)
                if inspect.isclass(owner):
                    last_class = owner
    assert not problems, "docs/formulas.md names what does not exist:\n" + "\n".join(problems)


def test_the_checker_rejects_what_does_not_exist():
    assert _check_test_cell("`test_schedules.py::test_no_such_test`")[0]
    assert _check_test_cell("`no_such_file.py::test_x`")[0]
    assert _check_test_cell("`test_buffers_closed_forms`") == ([], 1)
    assert _resolve("NoiseSchedule.no_such_buffer", None) is None
    assert _resolve("models.vq.VectorQuantizer", None) is not None
