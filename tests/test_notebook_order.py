"""The notebooks come in the order they build on each other (issue 18, section 3).

Each main notebook's first cell names the notebooks it needs (``**Builds on:** [3](03_ddpm.ipynb), ...``); every one
of them must come earlier. Prose may point *forward* ("later, notebook 9 ..."), but only in words that say so, so that
no notebook silently uses what a later one introduces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MAIN = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
FORWARD_WORDS = ("later", "next")


def _number(path: Path) -> int:
    return int(path.name[:2])


def _markdown(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]


def _prose(text: str) -> str:
    """Markdown without code spans, code blocks and LaTeX, whose digits are not references."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    return re.sub(r"\$[^$]*\$", " ", text)


def test_numbers_run_from_1_without_gaps_or_repeats():
    assert [_number(p) for p in MAIN] == list(range(1, len(MAIN) + 1)), [p.name for p in MAIN]


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.stem)
def test_first_cell_names_only_earlier_notebooks(path):
    first = _markdown(path)[0]
    line = next((l for l in first.splitlines() if l.startswith("**Builds on:**")), None)
    assert line is not None, f"{path.name}: the first cell has no '**Builds on:** ...' line naming the notebooks it needs"
    needed = re.findall(r"\]\((\d\d)_[a-z0-9_]+\.ipynb\)", line)
    if _number(path) == 1:
        assert not needed and "nothing" in line
        return
    assert needed, f"{path.name}: '**Builds on:**' names no notebook"
    for target in re.findall(r"\]\(([^)]+)\)", line):
        assert (NOTEBOOKS / target).exists(), f"{path.name}: '**Builds on:**' links to a missing {target}"
    later = [int(n) for n in needed if int(n) >= _number(path)]
    assert not later, f"{path.name} says it builds on notebook(s) {later}, which come after it"


@pytest.mark.parametrize("path", MAIN, ids=lambda p: p.stem)
def test_prose_names_a_later_notebook_only_as_a_pointer_forward(path):
    own = _number(path)
    offenders = []
    for text in _markdown(path):
        for sentence in re.split(r"(?<=[.;:!?])\s+(?=[A-Z*(])", _prose(text)):
            for group in re.findall(r"[Nn]otebooks? ((?:\d{1,2}(?:, | and | or |-))*\d{1,2})\b", sentence):
                numbers = [int(n) for n in re.findall(r"\d{1,2}", group)]
                if max(numbers) > own and not any(word in sentence.lower() for word in FORWARD_WORDS):
                    offenders.append(sentence.strip()[:160])
    assert not offenders, (f"{path.name} names a later notebook without saying it comes later "
                           "(write 'later, notebook N ...' or move the material):\n" + "\n".join(offenders))
