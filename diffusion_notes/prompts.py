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
from dataclasses import dataclass

from .errors import SettingsError

__all__ = ["PromptTruncatedWarning", "dropped_text", "warn_if_truncated", "parse_prompt_attention", "BREAK",
           "EMPHASIS", "DE_EMPHASIS", "COMMA_BACKTRACK", "PromptChunk", "a1111_chunks", "empty_chunk"]


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


# --------------------------------------------------------------------------------------------
# AUTOMATIC1111's long prompts: 75-token chunks
# --------------------------------------------------------------------------------------------

#: A1111's ``comma_padding_backtrack`` default: a chunk that fills up within this many tokens after a
#: comma moves the words after that comma into the next chunk, so a phrase is not cut in two.
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class PromptChunk:
    """One window of CLIP: ``ids`` = ``<start>``, up to 75 prompt tokens, ``<end>``, padding (77 in all),
    and the emphasis ``weights`` of those positions (1.0 for ``<start>``, ``<end>`` and padding)."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]


def _window(tokenizer) -> int:
    return tokenizer.model_max_length - 2  # 75 for every release


def _close_chunk(tokenizer, ids: list[int], weights: list[float]) -> PromptChunk:
    """``<start> ids <end>`` then the tokenizer's padding (``<end>`` for CLIP, ``!`` for OpenCLIP's SD 2.x / bigG),
    as ``tokenizer(padding="max_length")`` pads and as A1111's ``process_tokens`` rewrites SD 2.x padding."""
    room = _window(tokenizer) - len(ids)
    return PromptChunk(
        ids=(tokenizer.bos_token_id, *ids, tokenizer.eos_token_id) + (tokenizer.pad_token_id,) * room,
        weights=(1.0, *weights, 1.0) + (1.0,) * room)


def empty_chunk(tokenizer) -> PromptChunk:
    """The chunk of an empty prompt (A1111's ``empty_chunk``): what shorter prompts of a batch are padded with."""
    return _close_chunk(tokenizer, [], [])


def a1111_chunks(tokenizer, prompt: str, comma_backtrack: int = COMMA_BACKTRACK) -> list[PromptChunk]:
    """A prompt in A1111's syntax -> its 75-token chunks (``sd_hijack_clip.tokenize_line``).

    Each piece of :func:`parse_prompt_attention` is tokenized without special tokens and its weight
    given to each of its tokens. A chunk closes when it holds 75 tokens or at ``BREAK``; when it fills up
    less than ``comma_backtrack`` tokens after a comma, the tokens after the comma start the next chunk.
    """
    window = _window(tokenizer)
    comma = tokenizer.get_vocab().get(",</w>")
    pieces = parse_prompt_attention(prompt)
    chunks: list[PromptChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close(moved_ids=(), moved_weights=()):
        nonlocal ids, weights, last_comma
        chunks.append(_close_chunk(tokenizer, ids, weights))
        ids, weights, last_comma = list(moved_ids), list(moved_weights), -1

    for text, weight in pieces:
        if text == "BREAK" and weight == BREAK:
            close()
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if token == comma:
                last_comma = len(ids)
            elif comma_backtrack and len(ids) == window and last_comma != -1 and window - last_comma <= comma_backtrack:
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:]
                ids, weights = ids[:cut], weights[:cut]
                close(*moved)
            if len(ids) == window:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks
