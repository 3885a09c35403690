r"""Every number a notebook's prose states is one of that notebook's outputs (or a listed constant).

The house rule: a notebook says nothing its outputs do not show. This test reads the markdown cells of
every notebook under ``notebooks/`` (exercises included) and checks each number they state.

Which numbers are checked (the rule):

* decimals (``0.163``, ``2.59``, ``0.68x``), scientific notation (``3.8e-3``, ``3.8 × 10⁻³``), percentages
  (``12%``, ``0.5 %``), and integers only when they carry ``%`` or a unit (``x``/``×`` as a ratio, ``GB``, ``GiB``,
  ``MB``, ``s``, ``ms``, ``seconds``, ``minutes``): a plain integer is a count, an index or a size and is not checked;
* inside LaTeX (``$...$``, ``$$...$$``) only a *stated value*: a decimal right after ``\approx``, or after ``=`` at
  the very end of the formula (``$\sigma \approx 0.03$``, ``$\bar\alpha_T = 0.0047$``); every other number in a formula
  is part of the mathematics;
* not checked: code spans and fenced code (names and shapes of the code), link targets, HTML tags, the section number
  that opens a heading, a notebook's own section numbers (``12.3`` in notebook 12), numbers followed by another
  ``.digit`` (``4.3.2``), and numbers that name something rather than measure it: right after Eq./Eqs./Equation/Sec./
  Section/Fig./Figure/Table/Alg./Algorithm/App./Appendix/notebook/Lemma/Theorem/Prop., or a version (``SD 1.5``,
  ``SDXL 1.0``, ``v1.5``, ``torch 2.13``, ``diffusers 0.27``, ``k-diffusion 0.1``).

A number is backed when an output of the same notebook (stream text, ``text/plain``, ``text/html``; only
from notebooks whose outputs hold no error) shows a number that, rounded to the precision written in the
prose, equals it: ``0.70`` is backed by a printed ``0.7012`` but not by ``0.69``; ``3.8e-3`` by ``0.00381``
or ``3.81e-03``; ``12%`` by ``12.3%`` or by a printed fraction ``0.123``. Signs are ignored (prose says "drops
by 0.5" where the output prints ``-0.5``). Otherwise the number must be listed, with a one-line reason, in
the notebook's metadata, ``metadata["diffusion_notes"]["numbers"] = {"0.18215": "SD's latent scale factor
(Rombach et al. 2022, CompVis config)"}``: constants from papers and configurations, never measured results.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)

_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
_MINUS = "-−–"
# a prose number: mantissa, optional exponent (e-3, × 10⁻³, x 10^-3), optional percent sign
_NUMBER = re.compile(
    rf"(?<![\w.])(?P<sign>[{_MINUS}])?(?P<mantissa>\d+(?:\.\d+)?)"
    rf"(?:(?:[eE](?P<e>[{_MINUS}+]?\d+))|(?:\s*[×x]\s*10(?:\^\{{?(?P<caret>[{_MINUS}+]?\d+)\}}?|(?P<sup>[⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+))))?"
    r"(?P<percent>\s?%)?"
    r"(?P<unit>\s?(?:x|×|GB|GiB|MB|s|ms|seconds|minutes)\b)?"
)
_NAMING = re.compile(
    r"(?:\b(?:Eqs?|Equations?|Secs?|Sections?|Figs?|Figures?|Tables?|Algs?|Algorithms?|Apps?|Appendix|notebooks?|"
    r"Lemma|Theorem|Props?|Alg\.?|SD|SDXL|Stable Diffusion|v|ViT-[BLH]|torch|PyTorch|diffusers|k-diffusion|transformers|Python)"
    r"\.?\s*(?:\d+(?:\.\d+)*[a-z]?(?:\s*(?:-|–|,|and|&)\s*)?)*)$",
    re.IGNORECASE,
)


_STATED = re.compile(r"\\approx\s*(-?\d+\.\d+(?:\\%)?)|=\s*(-?\d+\.\d+(?:\\%)?)\s*$")


def _stated_in_formula(formula: str) -> str:
    """The values a formula states: a decimal after ``\\approx``, or after ``=`` at the formula's end."""
    return " ".join((m.group(1) or m.group(2)).replace("\\%", "%") for m in _STATED.finditer(formula.strip()))


def _prose(text: str) -> str:
    """Markdown without what the rule leaves out: fenced code, code spans, LaTeX (all but its stated values),
    link targets, HTML tags, the section numbers that open a heading."""
    text = re.sub(r"^```.*?^```", " ", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = text.replace(r"\$", " ")
    text = re.sub(r"\$\$(.+?)\$\$", lambda m: f" {_stated_in_formula(m.group(1))} ", text, flags=re.S)
    text = re.sub(r"\$([^$]+?)\$", lambda m: f" {_stated_in_formula(m.group(1))} ", text)
    text = re.sub(r"\]\([^)]*\)", "] ", text)
    text = re.sub(r"^(#+)\s*[\d.]+", r"\1", text, flags=re.M)
    return re.sub(r"<[^>]+>", " ", text)


def _written(match: re.Match) -> tuple[float, int, bool] | None:
    """(value, decimals written, is a percentage) of a prose number, or None when the rule skips it."""
    mantissa, percent = match["mantissa"], bool(match["percent"])
    exponent = match["e"] or match["caret"] or (match["sup"].translate(_SUPERSCRIPT) if match["sup"] else None)
    if exponent is None and "." not in mantissa and not percent and not match["unit"]:
        return None  # a plain integer without a unit: a count, an index, a size
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    if exponent is not None:
        e = int(exponent.replace("−", "-").replace("–", "-"))
        return float(mantissa) * 10.0**e, decimals - e, percent
    return float(mantissa), decimals, percent


def prose_numbers(text: str, chapter: str = "") -> list[tuple[str, float, int, bool]]:
    """The numbers the rule checks in a markdown text: (as written, value, decimals, percentage).
    ``chapter`` is the notebook's number: ``12.3`` in notebook 12 is its section 12.3."""
    prose, found = _prose(text), []
    for match in _NUMBER.finditer(prose):
        if _NAMING.search(prose[max(0, match.start() - 40):match.start()]):
            continue
        if chapter and re.fullmatch(rf"0?{int(chapter)}\.\d", match["mantissa"]):
            continue
        if re.match(r"\.\d", prose[match.end():match.end() + 2]):  # 4.3.2: a section or version number
            continue
        written = _written(match)
        if written is not None:
            found.append((match.group(0).strip(), *written))
    return found


_OUTPUT_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?P<percent>\s?%)?")


def output_numbers(cells) -> list[tuple[float, bool]]:
    """Every number printed by the code cells: (absolute value, printed with a percent sign)."""
    texts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            for kind in ("text/plain", "text/html", "text/markdown"):
                if kind in output.get("data", {}):
                    texts.append("".join(output["data"][kind]))
    return [(float(m.group(0).rstrip("% ")), bool(m["percent"])) for text in texts for m in _OUTPUT_NUMBER.finditer(text)]


def backed(value: float, decimals: int, percent: bool, printed: list[tuple[float, bool]]) -> bool:
    """Whether a printed number, rounded to the written precision, equals the written one."""
    tolerance = 0.5 * 10.0**-decimals * 1e-6  # float noise in the rounding only

    def same(x: float) -> bool:
        return abs(round(x, decimals) - value) <= tolerance + 1e-12 * abs(value) or \
            abs(math.floor(x * 10**decimals + 0.5) / 10**decimals - value) <= tolerance + 1e-12 * abs(value)

    for x, x_is_percent in printed:
        if percent and not x_is_percent and same(100 * x):
            return True
        if percent == x_is_percent and same(x):
            return True
    return False


def _chapter(path: Path) -> str:
    """A main notebook's number (``12`` for ``06_score_and_sde``); none for the exercises."""
    return "" if path.parent.name == "exercises" else path.name.split("_")[0]


def _notebook_id(path: Path) -> str:
    return path.relative_to(path.parents[1]).as_posix() if path.parent.name == "exercises" else path.name


def unbacked(notebook: dict, chapter: str = "") -> tuple[list[str], int]:
    """The prose numbers that no output shows and the metadata does not list, and how many were checked."""
    cells = notebook["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    printed = [] if errors else output_numbers(c for c in cells if c["cell_type"] == "code")
    listed = notebook.get("metadata", {}).get("diffusion_notes", {}).get("numbers", {})
    missing, checked = [], 0
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for written, value, decimals, percent in prose_numbers("".join(cell["source"]), chapter):
            checked += 1
            if written in listed or backed(abs(value), decimals, percent, printed):
                continue
            missing.append(f"cell {index}: {written}")
    return missing, checked


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_notebook_id)
def test_every_number_in_the_prose_is_an_output(path):
    notebook = json.loads(path.read_text())
    missing, _ = unbacked(notebook, _chapter(path))
    assert not missing, (f"{_notebook_id(path)}: numbers in the markdown that no output shows (at the precision written) "
                         "and metadata['diffusion_notes']['numbers'] does not list:\n  " + "\n  ".join(missing))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_notebook_id)
def test_listed_constants_have_a_reason_and_are_used(path):
    notebook = json.loads(path.read_text())
    listed = notebook.get("metadata", {}).get("diffusion_notes", {}).get("numbers", {})
    used = {written for c in notebook["cells"] if c["cell_type"] == "markdown"
            for written, *_ in prose_numbers("".join(c["source"]), _chapter(path))}
    assert all(isinstance(reason, str) and len(reason.split()) >= 3 for reason in listed.values()), "each listed number needs a reason"
    assert set(listed) <= used, f"listed but not in the prose (remove them): {sorted(set(listed) - used)}"


def _notebook(markdown: str, printed: str, numbers: dict | None = None) -> dict:
    return {"metadata": {"diffusion_notes": {"numbers": numbers or {}}},
            "cells": [{"cell_type": "markdown", "source": [markdown]},
                      {"cell_type": "code", "source": [], "outputs": [{"output_type": "stream", "name": "stdout", "text": [printed]}]}]}


@pytest.mark.parametrize("markdown, printed, ok", [
    ("the error is 0.70 here", "error 0.7012", True),
    ("the error is 0.70 here", "error 0.69", False),
    ("the error is 0.163", "0.16", False),  # fewer digits printed than written
    ("an error of 3.8e-3", "err=0.00381", True),
    ("an error of 3.8 × 10⁻³", "err=3.81e-03", True),
    ("an error of 3.8 × 10⁻³", "err=3.9e-03", False),
    ("12% of the pixels", "fraction 0.123", True),
    ("12% of the pixels", "12.4 %", True),
    ("12% of the pixels", "0.13", False),
    ("slope −4.4", "slope 4.41", True),
    ("Eq. 12 and Sec. 4.3.2 of SD 1.5, 50 steps, $x^{0.5}$, `0.123`", "", True),  # names, integers, LaTeX, code
    ("the order is 2.59", "2.58", False),
    (r"ends at $\sigma \approx 0.03$ and $\bar\alpha_T = 0.0047$", "0.0292 0.00468", True),  # stated values in LaTeX
    (r"ends at $\sigma \approx 0.03$", "0.0451", False),
    ("about 3x faster", "ratio 3.2", True),  # an integer with a unit
    ("about 3x faster", "ratio 3.6", False),
    ("section 6.4 of notebook 6 and Eq. 12-13", "", True),
])
def test_the_rule_catches_a_wrong_number(markdown, printed, ok):
    assert (not unbacked(_notebook(markdown, printed))[0]) == ok


def test_a_listed_constant_is_accepted_and_an_error_output_backs_nothing():
    assert not unbacked(_notebook("scaled by 0.18215", "", {"0.18215": "SD's latent scale factor (CompVis config)"}))[0]
    notebook = _notebook("the error is 0.70", "0.70")
    notebook["cells"][1]["outputs"].append({"output_type": "error", "ename": "ValueError", "evalue": "", "traceback": []})
    assert unbacked(notebook)[0]
