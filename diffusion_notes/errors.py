"""The two kinds of error a user can cause, and nothing else.

* :class:`SettingsError`: a bad generation setting (a guidance scale of NaN, a seed out of range, an
  option the chosen sampler does not take). It is a ``ValueError`` and carries ``option``, the name of
  the offending setting as the Python API spells it, so that the command line can name its own flag.
* :class:`CheckpointError`: anything wrong with a file or folder of weights; the message names the
  file and, where possible, the tensor or the JSON/YAML key.

The command line catches exactly these two, prints one line and exits with code 2; any other
exception is a bug in this package and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["SettingsError", "CheckpointError"]


class SettingsError(ValueError):
    """A bad setting; ``option`` is its name in the Python API (e.g. ``"guidance_scale"``)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as given; the message names the file, the problem and the fix."""
