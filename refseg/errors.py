"""refseg's exceptions. Every error caused by the user's input subclasses ``UserError``: the command
lines print its message as one line and exit with status 2 (``refseg.cli.run``).

This module imports nothing from refseg, so any module may raise these without depending on the
command-line layer.
"""
from __future__ import annotations

import re
from typing import Optional


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint directory is missing, incomplete or corrupt (one-line message)."""


class ImageReadError(UserError):
    """An image file is missing, not an image, or cannot be decoded."""


class RunDirectoryError(UserError):
    """A run or output directory cannot be used as asked (it already holds a run and neither --resume nor
    --overwrite was given, another training is using it, there is nothing to resume in it)."""


class SaveError(Exception):
    """Writing a checkpoint, the resumable state or the run's records failed (disk full, I/O error).

    Everything saved before is intact; the message says what failed and how to continue. Not the
    user's input: the command lines print it as one line and exit with status 1.
    """


class RefShapesError(UserError, ValueError):
    """Bad refshapes generation parameters or an unusable refshapes folder (one-line message)."""


class DataError(UserError, ValueError):
    """Bad or missing data; the message names the file and the item (ref / annotation / row).

    A DataError raised inside a DataLoader worker is re-raised by PyTorch as
    ``DataError("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback ...")``;
    the constructor recovers the original one-line message so command lines stay readable.
    The worker traceback is kept in ``worker_traceback``.
    """

    def __init__(self, *args):
        self.worker_traceback: Optional[str] = None
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "Original Traceback" in args[0]:
            self.worker_traceback = args[0]
            lines = [ln for ln in args[0].strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else args[0]
            # "refseg.errors.DataError: <message>" -> "<message>"
            last = re.sub(r"^[\w.]*(DataError|UnsafePickleError)\s*:\s*", "", last.strip())
            args = (last,)
        super().__init__(*args)


class UnsafePickleError(DataError):
    """A pickle asked to import or call something; it was refused and nothing ran."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (or its type name)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
