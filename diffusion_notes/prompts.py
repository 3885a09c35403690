r"""CLIP reads 77 tokens: ``<start>``, 75 prompt tokens, ``<end>`` (and padding). Longer prompts are cut.

CompVis (``FrozenCLIPEmbedder``) and diffusers (``encode_prompt``) tokenize with ``truncation=True``,
so every word after the 75th token silently stops influencing the picture (diffusers logs it).
Here the cut is never silent: :func:`warn_if_truncated` names the words that were dropped.
"""

from __future__ import annotations

import warnings

__all__ = ["PromptTruncatedWarning", "dropped_text", "warn_if_truncated"]


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
