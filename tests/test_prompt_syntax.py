"""AUTOMATIC1111's prompt syntax (``prompts.parse_prompt_attention``).

The first test is the list of examples in the docstring of A1111's ``modules/prompt_parser.py``
(``parse_prompt_attention``), copied with their expected values as A1111 documents them; the others
are worked out by hand from the rules (1.1 per ``( )``, 1/1.1 per ``[ ]``, ``(x:w)`` = w, products when nested).
"""

from __future__ import annotations

import pytest

from diffusion_notes.errors import SettingsError
from diffusion_notes.prompts import parse_prompt_attention

A1111_DOCSTRING_EXAMPLES = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    (r"\(literal\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
]


@pytest.mark.parametrize("text, expected", A1111_DOCSTRING_EXAMPLES)
def test_a1111_documented_examples(text, expected):
    got = parse_prompt_attention(text)
    assert [piece for piece, _ in got] == [piece for piece, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in expected], rel=1e-12)


HAND_WORKED = [
    ("[[faint]]", [["faint", 1 / 1.1 ** 2]]),
    ("((big:2))", [["big", 2 * 1.1]]),
    ("[x (y) z]", [["x ", 1 / 1.1], ["y", 1.0], [" z", 1 / 1.1]]),  # 1.1 / 1.1 = 1 up to rounding
    ("(a:0.5) (b:1.5)", [["a", 0.5], [" ", 1.0], ["b", 1.5]]),
    ("red) car]", [["red) car]", 1.0]]),  # closers with nothing open are plain characters
    (r"\\ and \)", [["\\ and )", 1.0]]),
    ("", [["", 1.0]]),
    ("a ratio 16:9", [["a ratio 16:9", 1.0]]),
    # A1111 splits the plain text "a cat BREAK " at the word and keeps the empty remainder
    ("a cat BREAK (a dog)", [["a cat", 1.0], ["BREAK", -1.0], ["", 1.0], ["a dog", 1.1]]),
    ("BREAKFAST", [["BREAKFAST", 1.0]]),  # only the whole word
]


@pytest.mark.parametrize("text, expected", HAND_WORKED)
def test_rules_worked_by_hand(text, expected):
    got = parse_prompt_attention(text)
    assert [piece for piece, _ in got] == [piece for piece, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in expected], rel=1e-12)


def test_a_weight_that_is_no_number_is_a_settings_error():
    with pytest.raises(SettingsError, match="'1.2.3'"):
        parse_prompt_attention("(cat:1.2.3)")
