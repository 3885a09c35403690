"""Checkers for the classroom exercises in ``notebooks/exercises``.

Each ``check_<name>(student_function)`` runs the student's function on several fixed float64
cases, compares it with the library (or a closed form), prints what went wrong (the case, the
inputs, expected vs got, and a hint that recognises the typical mistakes) and returns True/False.
A stub that still raises ``NotImplementedError`` is reported as "not implemented yet".

The exercises live in one module per notebook, which registers them in :data:`EXERCISES`
(:mod:`.harness` holds the machinery, :mod:`.cases` the inputs several notebooks share); the
``check_<name>`` functions are derived here from that registry.
"""

# imported in the notebooks' order, so that EXERCISES lists the exercises as the notebooks do
from . import schedules_and_forward  # noqa: F401  (01) registers its exercises
from . import training_and_ddim  # noqa: F401  (02)
from . import multistep_and_guidance  # noqa: F401  (03)
from . import samplers_training_attention  # noqa: F401  (04)
from . import sigma_view  # noqa: F401  (05)
from . import inversion_guidance  # noqa: F401  (10) its checkers stay in that module, outside EXERCISES
from .harness import EXERCISES, checker

globals().update({f"check_{name}": checker(exercise) for name, exercise in EXERCISES.items()})

__all__ = ["EXERCISES"] + [f"check_{name}" for name in EXERCISES]
