"""Checkers for the classroom exercises in ``notebooks/exercises``.

Each ``check_<name>(student_function)`` runs the student's function on several fixed float64
cases, compares it with the library (or a closed form), prints what went wrong (the case, the
inputs, expected vs got, and a hint that recognises the typical mistakes) and returns True/False.
A stub that still raises ``NotImplementedError`` is reported as "not implemented yet".

The exercises live in one module per notebook, which registers them in :data:`EXERCISES`
(:mod:`.harness` holds the machinery, :mod:`.cases` the inputs several notebooks share); the
``check_<name>`` functions are derived here from that registry.

The exercises beyond transcription (notebooks 07-08: a number to derive, a measurement to predict,
a whole loop, a training step, a bug to find) are registered in :data:`BEYOND` (:mod:`.beyond` holds
their machinery) and checked by what the answer computes rather than by a reference output.
"""

# imported in the notebooks' order, so that EXERCISES lists the exercises as the notebooks do
from . import schedules_and_forward  # noqa: F401  (01) registers its exercises
from . import training_and_ddim  # noqa: F401  (02)
from . import multistep_and_guidance  # noqa: F401  (03)
from . import samplers_training_attention  # noqa: F401  (04)
from . import sigma_view  # noqa: F401  (05)
from . import adapters  # noqa: F401  (06)
from . import derive_and_predict  # noqa: F401  (07) registers its exercises in BEYOND
from . import loops_and_bugs  # noqa: F401  (08)
from . import inversion_guidance  # noqa: F401  (10) its checkers stay in that module, outside EXERCISES
from . import flow_matching  # noqa: F401  (11)
from . import edm_and_bound  # noqa: F401  (12)
from .beyond import BEYOND
from .beyond import checker as _beyond_checker
from .harness import EXERCISES, checker
from .loops_and_bugs import show_buggy

globals().update({f"check_{name}": checker(exercise) for name, exercise in EXERCISES.items()})
globals().update({f"check_{name}": _beyond_checker(task) for name, task in BEYOND.items()})

__all__ = ["EXERCISES", "BEYOND", "show_buggy"] + [f"check_{name}" for name in EXERCISES] + [f"check_{name}" for name in BEYOND]
