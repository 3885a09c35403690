r"""The notebooks' markdown renders: no control characters, and every formula parses.

Control characters in markdown are almost always a Python escape that slipped into notebook JSON
written from a non-raw string (``"\bar"`` is a backspace plus ``ar``, ``"\alpha"`` a bell plus ``lpha``);
they render as ``$\sqrt{arlpha}$``.

Formulas: every ``$$...$$`` block and every inline ``$...$`` outside code spans and fenced code is
parsed by matplotlib's mathtext (a TeX math parser that rejects unknown commands such as ``\alpah``
and unbalanced braces). MathJax, which renders the notebooks, accepts more than mathtext does, so a
formula is first translated, and only these MathJax constructs are accepted beyond mathtext:

* ``\begin{aligned}``/``\begin{cases}``/``\begin{pmatrix}`` ... ``\end{...}``: each row (split at ``\\``)
  is parsed on its own, with the ``&`` alignment marks removed;
* sizing commands ``\big \Big \bigg \Bigg`` (and their ``l``/``r``/``m`` forms) are dropped;
* ``\tfrac``/``\dfrac`` -> ``\frac``; ``\lVert``/``\rVert`` -> ``\|``; ``\operatorname`` -> ``\mathrm``;
  ``\underbrace{A}_{B}`` -> ``{A}_{B}``; ``\tag{...}`` and ``\!`` are dropped;
* ``\text{...}`` (shown verbatim by MathJax) -> a placeholder ``\mathrm{T}``; ``\varnothing`` -> ``\emptyset``;
  ``\le``/``\ge`` -> ``\leq``/``\geq``;
* an unbraced one-token argument, as in ``\mathcal N``, ``\sqrt\beta``, ``\frac12``, gets its braces;
* line breaks inside a formula are spaces.

Anything else mathtext cannot parse fails the test with the notebook, the cell and the formula.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _markdown_cells(path: Path):
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "markdown":
            yield index, "".join(cell["source"])


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # fenced code
    return re.sub(r"`[^`\n]*`", "", text)  # code spans


def math_blocks(text: str) -> list[str]:
    """The formulas of a markdown text: ``$$...$$`` blocks, then inline ``$...$`` (escaped ``\\$`` is text)."""
    text = _without_code(text).replace(r"\$", "")
    blocks = re.findall(r"\$\$(.+?)\$\$", text, flags=re.S)
    rest = re.sub(r"\$\$(.+?)\$\$", " ", text, flags=re.S)
    inline = re.findall(r"\$([^$]+?)\$", rest)
    leftover = re.sub(r"\$([^$]+?)\$", " ", rest)
    if "$" in leftover:
        blocks.append("\x00unmatched $")  # reported by check_math
    return [b.strip() for b in blocks + inline]


_DROP = [r"\\[Bb]igg?[lrm]?(?![a-zA-Z])", r"\\tag\{[^}]*\}", r"\\!"]
_RENAME = {r"\tfrac": r"\frac", r"\dfrac": r"\frac", r"\lVert": r"\|", r"\rVert": r"\|", r"\operatorname": r"\mathrm",
           r"\varnothing": r"\emptyset", r"\underbrace": "", r"\le": r"\leq", r"\ge": r"\geq"}
_ONE_ARGUMENT = r"mathcal|mathbb|mathrm|mathbf|mathit|mathsf|mathtt|mathfrak|sqrt|text|tilde|bar|hat|vec|dot"


def _translate(formula: str) -> list[str]:
    formula = formula.replace("\n", " ")
    for pattern in _DROP:
        formula = re.sub(pattern, "", formula)
    for old, new in _RENAME.items():
        formula = re.sub(re.escape(old) + r"(?![a-zA-Z])", lambda m: new, formula)
    # MathJax takes an unbraced one-token argument (\mathcal N, \sqrt\beta, \frac12); mathtext wants braces
    formula = re.sub(rf"\\({_ONE_ARGUMENT})\s*(\\[a-zA-Z]+|[A-Za-z0-9])", r"\\\1{\2}", formula)
    token = r"(\\[a-zA-Z]+|[A-Za-z0-9]|\{[^{}]*\})"
    braced = lambda m: m.group(0) if m.group(0).startswith("{") else "{" + m.group(0) + "}"  # noqa: E731
    formula = re.sub(rf"\\frac\s*{token}\s*{token}",
                     lambda m: r"\frac" + braced(re.match(token, m.group(1))) + braced(re.match(token, m.group(2))), formula)
    formula = re.sub(r"\\text\{[^{}]*\}", lambda m: r"\mathrm{T}", formula)  # text is shown verbatim by MathJax
    environments = r"\\begin\{(aligned|cases|pmatrix|bmatrix|matrix|array)\}(\{[^}]*\})?|\\end\{(aligned|cases|pmatrix|bmatrix|matrix|array)\}"
    if re.search(environments, formula):
        formula = re.sub(environments, " ", formula)
        return [row.replace("&", " ") for row in re.split(r"\\\\", formula) if row.strip()]
    return [formula]


def check_math(formula: str) -> str | None:
    """None if ``formula`` parses, else the parser's message."""
    from matplotlib.mathtext import MathTextParser

    if formula.startswith("\x00"):
        return formula[1:]
    if formula.count("{") - formula.count(r"\{") != formula.count("}") - formula.count(r"\}"):
        return "unbalanced braces"
    parser = MathTextParser("path")
    for row in _translate(formula):
        try:
            parser.parse(f"${row}$")
        except ValueError as err:
            return " ".join(str(err).split())
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(p.parents[1]).as_posix() if p.parent.name == "exercises" else p.name)
def test_markdown_has_no_control_characters(path):
    bad = [(i, repr(text[max(0, m.start() - 20):m.end() + 10])) for i, text in _markdown_cells(path) for m in CONTROL.finditer(text)]
    assert not bad, f"{path.name}: control characters (a Python escape in a non-raw string?) in cells {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(p.parents[1]).as_posix() if p.parent.name == "exercises" else p.name)
def test_every_formula_parses(path):
    bad = [f"cell {i}: ${formula}$ -> {error}" for i, text in _markdown_cells(path)
           for formula in math_blocks(text) if (error := check_math(formula))]
    assert not bad, f"{path.name}:\n" + "\n".join(bad)


@pytest.mark.parametrize("formula, ok", [
    (r"\sqrt{\bar\alpha_t}", True),
    (r"\begin{aligned} a &= b \\ c &= \tfrac12 \Big(d\Big) \end{aligned}", True),
    (r"\text{SNR}(t) = \lVert x \rVert", True),
    (r"\tfrac1{12}(23 e_t) + \frac{a}2 + \frac12", True),
    (r"\sqrt{\bar\alpah_t}", False),  # a typo
    (r"\frac{a}{b", False),  # unbalanced
    ("\\sqrt{\x08ar\x07lpha}", False),  # the escape accident, seen by the control-character test; mathtext fails too
])
def test_the_checker_accepts_mathjax_and_rejects_broken_formulas(formula, ok):
    assert (check_math(formula) is None) == ok


def test_unmatched_dollar_is_reported():
    assert any(check_math(f) for f in math_blocks("costs $5 and $x$"))
    assert not any(check_math(f) for f in math_blocks(r"costs \$5 and $x$, code `a $ b` is text"))
