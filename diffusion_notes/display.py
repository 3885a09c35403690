"""Notebook helpers: show a library function's *own* source, and a formula, in a notebook.

The notebooks never paste a second copy of library code; they call :func:`show_source` on the
function itself, so what the reader sees is exactly what the tests run. Outside IPython the
functions fall back to printing plain text.
"""

from __future__ import annotations

import inspect
import textwrap

__all__ = ["show_source", "show_formula", "source_lines"]


def source_lines(obj, start: str | None = None, stop: str | None = None) -> str:
    """The source of ``obj``; with ``start``/``stop``, only the lines from the first one containing
    ``start`` up to and including the first later one containing ``stop`` (to focus on a few lines)."""
    return _select(obj, start, stop)[0]


def _select(obj, start: str | None, stop: str | None) -> tuple[str, int]:
    """(selected source, index of its first line within the object's source)."""
    source = inspect.getsource(obj)
    if start is None and stop is None:
        return source, 0
    lines = source.splitlines()
    i = next((k for k, line in enumerate(lines) if start is None or start in line), None)
    if i is None:
        raise ValueError(f"{start!r} not found in the source of {obj.__qualname__}")
    j = len(lines) - 1 if stop is None else next((k for k in range(i, len(lines)) if stop in lines[k]), None)
    if j is None:
        raise ValueError(f"{stop!r} not found after {start!r} in the source of {obj.__qualname__}")
    return textwrap.dedent("\n".join(lines[i : j + 1])) + "\n", i


def _highlighted_html(code: str) -> str | None:
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:  # pragma: no cover - pygments ships with IPython
        return None
    formatter = HtmlFormatter(noclasses=True, style="default")
    return highlight(code, PythonLexer(), formatter)


def show_source(obj, start: str | None = None, stop: str | None = None, docstring: bool = True) -> None:
    """Display the source of a library function or class with syntax highlighting, headed by its
    module and line number. ``start``/``stop`` select a range of lines (see :func:`source_lines`);
    ``docstring=False`` drops the docstring so the code itself stands out."""
    code, offset = _select(obj, start, stop)
    if not docstring and start is None:
        code = _strip_docstring(code)
    module = inspect.getmodule(obj).__name__
    first_line = inspect.getsourcelines(obj)[1] + offset
    if start is None and stop is None:
        header = f"{module}.{obj.__qualname__}  (line {first_line})"
    else:
        last_line = first_line + code.count("\n") - 1
        header = f"{module}.{obj.__qualname__}, lines {first_line}-{last_line}" if last_line > first_line else f"{module}.{obj.__qualname__}, line {first_line}"
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover
        get_ipython = None
    html = _highlighted_html(code) if get_ipython is not None and get_ipython() is not None else None
    if html is None:
        print(f"# {header}\n{code}")
        return
    # text/plain travels with the HTML, for viewers that do not render HTML
    bundle = {"text/html": f"<div style='font-size:85%'><b><code>{header}</code></b>{html}</div>", "text/plain": f"# {header}\n{code}"}
    display(bundle, raw=True)


def _strip_docstring(code: str) -> str:
    lines = code.splitlines()
    out, i = [], 0
    # keep the signature (possibly multi-line) up to the line ending with ':'
    while i < len(lines):
        out.append(lines[i])
        if lines[i].rstrip().endswith(":"):
            i += 1
            break
        i += 1
    if i < len(lines):
        first = lines[i].strip()
        for quote in ('r"""', '"""', "r'''", "'''"):
            if first.startswith(quote):
                end = quote[-3:]
                rest = first[len(quote):]
                if end in rest:
                    i += 1
                else:
                    i += 1
                    while i < len(lines) and end not in lines[i]:
                        i += 1
                    i += 1
                break
    return "\n".join(out + lines[i:]) + "\n"


def show_formula(latex: str) -> None:
    """Display a LaTeX formula (``$$...$$`` is added) as math in a notebook, or print it."""
    try:
        from IPython import get_ipython
        from IPython.display import Math, display

        if get_ipython() is not None:
            display(Math(latex))
            return
    except ImportError:  # pragma: no cover
        pass
    print(latex)
