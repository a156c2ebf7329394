"""Errors cbert raises for bad checkpoints, inputs and missing backends.

Each is a ValueError (or ImportError) subclass so callers can catch the familiar type,
and the CLI turns any of them into one line on stderr and exit status 2.
"""


class CheckpointError(ValueError):
    """A checkpoint folder, file, tensor or config that cannot be used; names the file."""


class InputError(ValueError):
    """Bad model inputs (ids, masks, shapes, lengths); names the argument and the value."""


class BackendUnavailable(ImportError):
    """A backend whose package is not installed or whose device cannot be opened."""


class UsageError(ValueError):
    """A mistake on the command line that argparse cannot see (a missing file, no default model)."""


def shown(value: object, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut short (a stranger's file may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the caller's first frame outside cbert, so the user sees
    the line of their own code that led here, not a line of cbert's source."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)  # stacklevel 1 is this function, 2 its caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)
