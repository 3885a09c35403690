r"""The harness of the exercises that ask for more than a transcribed formula (``notebooks/exercises/07-08``).

Three kinds of answer, each checked without comparing with the library's own version of the answer:

* a **number** derived on paper (:func:`number_task`): compared, to 0.1 %, with a value the checker
  computes independently (by composing Gaussians, by bisection, by counting calls); a wrong number that
  equals a *typical wrong derivation* gets the hint that names it. The right value is not printed, so
  the checker can be tried again;
* a **prediction** of a measurement (a number or a word): the checker measures it (an order of
  convergence on the exact Gaussian mixture, the judge's verdict on the digits model), accepts it within
  a tolerance, and prints the measurement either way;
* a **function** (a sampling loop, a training step, a repaired sampler) judged by a *property*: its
  error against the exact probability-flow answer, exactness where the sampler must be exact, a loss
  that falls and an update that equals the gradient step. A typical wrong function is recognised by the
  symptom it leaves (a NaN, an error that does not shrink with the steps, ...).

Each exercise is a :class:`Task` registered in :data:`BEYOND`; ``check_<name>(answer)`` prints what it
found (and a hint when wrong) and returns True/False. Nothing is raised: an answer still ``None`` is
"not answered yet", a function still raising ``NotImplementedError`` "not implemented yet", any other
error is reported with the exercise's hint.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["BEYOND", "Task", "Verdict", "WrongKindOfAnswer", "register", "checker", "number_task", "as_number", "NUMBER_RTOL"]

#: How close a derived number must be to the checker's value (relative): rounding to 4 significant digits passes.
NUMBER_RTOL = 1e-3


class WrongKindOfAnswer(TypeError):
    """The answer is not the kind asked for (a string for a number, a tensor of the wrong shape, ...)."""


@dataclass
class Verdict:
    """What a task's judge found: right or wrong, the lines to print, and (when wrong) a hint."""

    ok: bool
    lines: list[str] = field(default_factory=list)
    hint: str = ""


@dataclass
class Task:
    """One exercise: ``judge(answer) -> Verdict``; ``what`` names the expected answer in the messages."""

    name: str
    what: str
    judge: Callable[[object], Verdict]
    hint: str = ""
    kind: str = "number"  # number / prediction / function / line


BEYOND: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`BEYOND` under its name, which must be new."""
    if task.name in BEYOND:
        raise ValueError(f"two exercises are called {task.name!r}")
    BEYOND[task.name] = task
    return task


def checker(task: Task) -> Callable[[object], bool]:
    """The notebooks' ``check_<name>(answer) -> bool`` for ``task``."""

    def check(answer) -> bool:
        return _check(task, answer)

    check.__name__ = f"check_{task.name}"
    check.__qualname__ = check.__name__
    check.__doc__ = f"Check the answer to exercise {task.name!r} ({task.what}); prints feedback and returns True/False."
    return check


def _check(task: Task, answer) -> bool:
    if answer is None or answer is Ellipsis:
        print(f"{task.name}: not answered yet (replace None by {task.what}).")
        return False
    try:
        verdict = task.judge(answer)
    except NotImplementedError:
        print(f"{task.name}: not implemented yet (the function still raises NotImplementedError).")
        return False
    except WrongKindOfAnswer as err:
        print(f"{task.name}: {err}")
        return False
    except Exception as err:  # noqa: BLE001 - report any error as feedback, never raise
        whose = "your function" if callable(answer) else "your answer"
        print(f"{task.name}: {whose} raised {type(err).__name__}: {err}")
        if task.hint:
            print(f"  hint: {task.hint}")
        return False
    head = f"{task.name}: correct." if verdict.ok else f"{task.name}: not right yet."
    print(head)
    for line in verdict.lines:
        print(f"  {line}")
    if not verdict.ok and (verdict.hint or task.hint):
        print(f"  hint: {verdict.hint or task.hint}")
    return verdict.ok


# --------------------------------------------------------------------------------------------
# numbers


def as_number(answer) -> float:
    """A real number from an int, float, NumPy or one-element tensor answer; TypeError otherwise."""
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        return float(answer.detach())
    if isinstance(answer, numbers.Real) and not isinstance(answer, bool):
        return float(answer)
    raise WrongKindOfAnswer(f"expected a number, got {type(answer).__name__} {answer!r}")


def close(a: float, b: float, rel: float) -> bool:
    return math.isfinite(a) and abs(a - b) <= rel * max(abs(b), 1e-12)


def number_task(name: str, expected: Callable[[], float], mistakes: list[tuple[Callable[[], float], str]], hint: str,
                explanation: str, rel: float = NUMBER_RTOL) -> Task:
    """A number derived on paper: right within ``rel`` of ``expected()`` (computed independently by the checker).

    ``mistakes``: (value of a typical wrong derivation, its hint). The right value is never printed."""

    def judge(answer) -> Verdict:
        got = as_number(answer)
        if close(got, expected(), rel):
            return Verdict(True, [f"{got:.6g} is right. {explanation}"])
        for value, message in mistakes:
            if close(got, value(), rel):
                return Verdict(False, [f"{got:.6g} is a typical wrong derivation."], message)
        return Verdict(False, [f"{got:.6g} is not within {rel:.1%} of the value the checker computes."])

    return Task(name, "a number", judge, hint, "number")
