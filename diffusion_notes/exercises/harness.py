r"""The checkers' harness: an :class:`Exercise`, the registry :data:`EXERCISES`, and the check itself.

Every checker follows the same recipe (:func:`_check`): build a few fixed float64 cases, compute
the expected answer with the library (or a closed form), call the student's function, and compare.
On a mismatch it prints the case, the inputs, expected vs got, where the largest difference is, and
then tries the *typical mistakes* listed for the exercise: when the student's output equals one of
them, the matching hint is printed (e.g. "you used the variance where the standard deviation
belongs"). Nothing is raised; a stub that raises ``NotImplementedError`` is reported as "not
implemented yet".

The exercises themselves live in one module per notebook of ``notebooks/exercises``; each calls
:func:`register` once per exercise, and the package derives ``check_<name>`` from the registry with
:func:`checker`, so an exercise's name is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

import torch

F64 = torch.float64


@dataclass
class Exercise:
    """One exercise: the signature the student implements, its cases, reference and known mistakes."""

    name: str
    signature: str
    reference: Callable
    cases: Callable[[], list[tuple[str, dict]]]
    mistakes: list[tuple[Callable, str]] = field(default_factory=list)
    hint: str = ""
    broadcast_ok: bool = False  # accept outputs that broadcast to the expected shape (e.g. a (B,1,1,1) variance)
    rtol: float = 1e-6
    atol: float = 1e-9


EXERCISES: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    """Add ``exercise`` to :data:`EXERCISES` under its name, which must be new."""
    if exercise.name in EXERCISES:
        raise ValueError(f"two exercises are called {exercise.name!r}")
    EXERCISES[exercise.name] = exercise
    return exercise


def checker(exercise: Exercise) -> Callable[[Callable], bool]:
    """The notebooks' ``check_<name>(student_function) -> bool`` for ``exercise``."""

    def check(student_function: Callable) -> bool:
        return _check(exercise, student_function)

    check.__name__ = f"check_{exercise.name}"
    check.__qualname__ = check.__name__
    check.__doc__ = (
        f"Check ``{exercise.name}{exercise.signature}`` on {len(exercise.cases())} fixed cases; "
        "prints feedback and returns True/False."
    )
    return check


# --------------------------------------------------------------------------------------------
# comparison and reporting


def _as_tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) and not _is_number_list(value) else (value,)


def _is_number_list(value) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, Fraction)) for v in value)


def _to_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(F64)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        if len({tuple(v.shape) for v in value}) == 1:
            return torch.stack([v.detach().to(F64) for v in value])  # a list of tensors, e.g. a sampler's history
    if _is_number_list(value):
        return torch.tensor([float(v) for v in value], dtype=F64)
    return torch.as_tensor(value, dtype=F64)


def _close(got, expected, exercise: Exercise, where: list | None = None) -> tuple[bool, str]:
    """(equal?, reason) for outputs that may be tensors, numbers or tuples of them. When ``where`` is a list,
    a mismatch of values appends ``(output number, index of the largest difference, expected, got)`` to it."""
    got_t, exp_t = _as_tuple(got), _as_tuple(expected)
    if len(got_t) != len(exp_t):
        return False, f"expected {len(exp_t)} output(s), got {len(got_t)}"
    for k, (g, e) in enumerate(zip(got_t, exp_t)):
        try:
            g, e = _to_tensor(g), _to_tensor(e)
        except (TypeError, ValueError, RuntimeError) as err:
            return False, f"output {k} is not a number or tensor ({type(g).__name__}: {err})"
        if g.shape != e.shape:
            try:
                broadcast = torch.broadcast_shapes(g.shape, e.shape) == e.shape
            except RuntimeError:
                broadcast = False
            if not (exercise.broadcast_ok and broadcast):
                return False, f"output {k} has shape {tuple(g.shape)}, expected {tuple(e.shape)}"
            g = g.expand(e.shape)
        if not torch.isfinite(g).all() and torch.isfinite(e).all():
            return False, f"output {k} contains NaN or inf"
        if not torch.allclose(g, e, rtol=exercise.rtol, atol=exercise.atol):
            difference = (g - e).abs().nan_to_num(nan=float("inf"))
            flat = int(difference.flatten().argmax()) if difference.dim() else 0
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), difference.shape)) if difference.dim() else ()
            if where is not None:
                where.append((k, index, float(e.flatten()[flat]) if e.dim() else float(e), float(g.flatten()[flat]) if g.dim() else float(g)))
            return False, f"output {k}: max |got - expected| = {float(difference.max()):.3g}"
    return True, ""


def _where(detail, kwargs) -> str:
    """Where the largest difference is: the element's index, and for batched inputs its batch element and t."""
    k, index, expected, got = detail
    text = f"  largest difference in output {k}"
    if index:
        text += f" at index {index}"
        t = kwargs.get("t")
        if isinstance(t, torch.Tensor) and t.dim() == 1 and len(index) > 1 and index[0] < len(t):
            text += f" (batch element {index[0]}, t = {int(t[index[0]])})"
    return text + f": expected {expected:.6g}, got {got:.6g}"


def _describe(value, limit: int = 4) -> str:
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()
        body = ", ".join(f"{float(v):.6g}" for v in flat[:limit])
        more = ", ..." if flat.numel() > limit else ""
        if value.dim() == 0:
            return f"{float(value):.6g}"
        return f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).replace('torch.', '')}, [{body}{more}])"
    if isinstance(value, (tuple, list)):
        if _is_number_list(value):
            return "[" + ", ".join(str(v) for v in value) + "]"
        return "(" + ", ".join(_describe(v, limit) for v in value) + ")"
    if callable(value):
        return getattr(value, "__name__", "a function")
    return repr(value)


def _call(fn, kwargs):
    # clone tensor inputs so a student function that modifies them in place cannot corrupt the next case
    def copy(v):
        if isinstance(v, torch.Tensor):
            return v.clone()
        return [copy(e) for e in v] if isinstance(v, list) else v

    return fn(**{k: copy(v) for k, v in kwargs.items()})


def _check(exercise: Exercise, student: Callable) -> bool:
    """Run ``student`` on every case of ``exercise``; print the first failure (or success) and return True/False."""
    cases = exercise.cases()
    for i, (label, kwargs) in enumerate(cases, 1):
        case = f"{exercise.name}: case {i}/{len(cases)} ({label})"
        expected = _call(exercise.reference, kwargs)
        try:
            got = _call(student, kwargs)
        except NotImplementedError:
            print(f"{exercise.name}: not implemented yet (the function still raises NotImplementedError).")
            return False
        except Exception as err:  # noqa: BLE001 - report any error as feedback, never raise
            print(f"{case} raised {type(err).__name__}: {err}")
            _print_inputs(kwargs)
            if exercise.hint:
                print(f"  hint: {exercise.hint}")
            return False
        where = []
        ok, reason = _close(got, expected, exercise, where)
        if not ok:
            print(f"{case} is wrong: {reason}")
            _print_inputs(kwargs)
            print(f"  expected: {_describe(expected)}")
            print(f"  got     : {_describe(got)}")
            if where:
                print(_where(where[0], kwargs))
            hint = _hint_for(exercise, got, kwargs)
            if hint:
                print(f"  hint: {hint}")
            return False
    print(f"{exercise.name}{exercise.signature}: all {len(cases)} cases correct.")
    return True


def _hint_for(exercise: Exercise, got, kwargs) -> str:
    """The message of the first typical mistake whose output equals ``got``, else the exercise's general hint."""
    for mistake, message in exercise.mistakes:
        try:
            matches = _close(got, _call(mistake, kwargs), exercise)[0]
        except Exception:  # noqa: BLE001 - a mistake that fails on this case is simply not the one made
            matches = False
        if matches:
            return message
    return exercise.hint


def _print_inputs(kwargs):
    print("  inputs:")
    for key, value in kwargs.items():
        print(f"    {key} = {_describe(value)}")


