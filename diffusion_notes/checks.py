"""The checks every setting goes through: one vocabulary of refusals, each a one-line
:class:`~diffusion_notes.errors.SettingsError` naming the option (which the command line maps to its flag)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import SettingsError

__all__ = ["check_real", "check_integer", "check_choice", "check_flag"]


def check_real(option: str, value, low: float | None = None, high: float | None = None, hint: str = "") -> float:
    """``value`` as a float; SettingsError unless it is a finite real number within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SettingsError(option, f"{option} must be a number, got {value!r}{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise SettingsError(option, f"{option} must be a finite number, got {value}{hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"between {low} and {high}")
        raise SettingsError(option, f"{option} must be {bounds}, got {value}{hint}")
    return value


def check_integer(option: str, value, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int; SettingsError unless it is an integer (not a bool or a float) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SettingsError(option, f"{option} must be a whole number, got {value!r}{hint}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else (f"<= {high}" if low is None else f"from {low} to {high}")
        raise SettingsError(option, f"{option} must be {bounds}, got {value}{hint}")
    return value


def check_choice(option: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(option, f"{option} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def check_flag(option: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise SettingsError(option, f"{option} must be True or False, got {value!r}")
