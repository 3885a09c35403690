r"""CLIP reads 77 tokens: ``<start>``, 75 prompt tokens, ``<end>`` (and padding). Longer prompts are cut.

CompVis (``FrozenCLIPEmbedder``) and diffusers (``encode_prompt``) tokenize with ``truncation=True``,
so every word after the 75th token silently stops influencing the picture (diffusers logs it).
Here the cut is never silent: :func:`warn_if_truncated` names the words that were dropped.

AUTOMATIC1111's web UI reads prompts differently, and many shared prompts are written for it:
``(word)`` and ``[word]`` weight words up or down, and long prompts are encoded in 75-token chunks.
:func:`parse_prompt_attention` is its prompt syntax; the chunked, weighted encoding is
``PromptEncoder(..., prompt_syntax="a1111")`` (:mod:`diffusion_notes.models.text`). The default,
``"plain"``, keeps CompVis's reading, in which brackets are ordinary characters.
"""

from __future__ import annotations

import re
import warnings

from .errors import SettingsError

__all__ = ["PromptTruncatedWarning", "dropped_text", "warn_if_truncated", "parse_prompt_attention", "BREAK",
           "EMPHASIS", "DE_EMPHASIS"]


class PromptTruncatedWarning(UserWarning):
    """A prompt is longer than the text encoder's window; the message quotes what was dropped."""


def dropped_text(tokenizer, prompt: str) -> str:
    """The part of ``prompt`` beyond the tokenizer's window (``""`` when it fits), decoded back to words."""
    ids = tokenizer(prompt, truncation=False, add_special_tokens=False).input_ids
    room = tokenizer.model_max_length - 2  # <start> and <end> take two of the 77 places
    return tokenizer.decode(ids[room:]).strip() if len(ids) > room else ""


def warn_if_truncated(tokenizer, prompts: list[str], what: str = "prompt") -> None:
    """Warn once per prompt that does not fit, quoting its dropped words."""
    for prompt in dict.fromkeys(prompts):  # each distinct prompt once
        dropped = dropped_text(tokenizer, prompt)
        if dropped:
            warnings.warn(f"the {what} is longer than CLIP's {tokenizer.model_max_length}-token window; these words "
                          f"are dropped and do not affect the image: \"{dropped}\"", PromptTruncatedWarning,
                          stacklevel=3)


# --------------------------------------------------------------------------------------------
# AUTOMATIC1111's emphasis syntax
# --------------------------------------------------------------------------------------------

#: ``(text)`` multiplies the weight of ``text`` by 1.1; ``[text]`` divides it by 1.1 (A1111 ``prompt_parser.py``).
EMPHASIS = 1.1
DE_EMPHASIS = 1 / 1.1
#: The weight that marks a BREAK in :func:`parse_prompt_attention`'s output (A1111's ``["BREAK", -1]``).
BREAK = -1.0

_SYNTAX = re.compile(r"""
      \\[()\[\]\\]             # \( \) \[ \] \\ : the character itself
    | \\                       # a lone backslash: dropped (as A1111 does)
    | \(                       # opens emphasis
    | \[                       # opens de-emphasis
    | :(?P<weight>[+-]?[.\d]+)\)   # ":1.3)" closes the innermost "(" with an explicit weight
    | \)                       # closes emphasis
    | \]                       # closes de-emphasis
    | [^\\()\[\]:]+            # plain text
    | :                        # a colon that starts no weight is plain text
""", re.X)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    r"""AUTOMATIC1111's prompt syntax: ``text -> [[text, weight], ...]`` (``modules/prompt_parser.py``).

    Each piece of text gets the product of the multipliers of the brackets around it:
    ``(x)`` :math:`\times 1.1`, ``[x]`` :math:`\div 1.1`, ``(x:w)`` :math:`\times w`; brackets nest
    (``((x))`` is :math:`1.1^2`). ``\(``, ``\)``, ``\[``, ``\]``, ``\\`` are the literal characters. A bracket
    left open applies to the end of the prompt; a closing bracket with nothing open is dropped. The word
    ``BREAK`` becomes ``["BREAK", -1.0]`` (the encoder then starts a new 75-token chunk). Neighbouring
    pieces of equal weight are joined; an empty prompt gives ``[["", 1.0]]``.
    """
    pieces: list[list] = []
    open_round: list[int] = []   # index into pieces where each still-open "(" began
    open_square: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _SYNTAX.finditer(text):
        token, weight = match.group(0), match.group("weight")
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif weight is not None and open_round:
            try:
                factor = float(weight)
            except ValueError:
                raise SettingsError("prompt", f"prompt weight {weight!r} in {match.group(0)!r} is not a number.") from None
            multiply_from(open_round.pop(), factor)
        elif token == ")" and open_round:
            multiply_from(open_round.pop(), EMPHASIS)
        elif token == "]" and open_square:
            multiply_from(open_square.pop(), DE_EMPHASIS)
        else:  # plain text (and unmatched closers, ":w)" outside brackets), split at BREAK
            for index, part in enumerate(_BREAK_WORD.split(token)):
                if index:
                    pieces.append(["BREAK", BREAK])
                pieces.append([part, 1.0])
    for start in open_round:  # unbalanced: an open bracket reaches the end of the prompt
        multiply_from(start, EMPHASIS)
    for start in open_square:
        multiply_from(start, DE_EMPHASIS)
    if not pieces:
        return [["", 1.0]]
    joined = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == joined[-1][1]:
            joined[-1][0] += piece[0]
        else:
            joined.append(piece)
    return joined
