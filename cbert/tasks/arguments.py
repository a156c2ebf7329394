"""Checks of the task methods' arguments, made where each task starts: every bad value is one
:class:`~cbert.errors.InputError` naming the argument and what was expected, before any work."""

from __future__ import annotations

import numbers

from ..errors import InputError


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{name}={value!r}; expected a positive integer")
    return int(value)


def stride_or_none(value) -> int | None:
    """A window overlap: None (the default) or an int >= 0; its upper bound depends on the text (windows.split)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"stride={value!r}; expected None or an integer >= 0 (tokens of overlap between windows)")
    return int(value)


def one_of(value, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name}={value!r}; choose one of {', '.join(choices)}")
    return value


def flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name}={value!r}; expected True or False")
    return value


def string(value, name: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{name} is a {type(value).__name__}, expected str")
    return value


def texts_list(texts) -> tuple[list[str], bool]:
    """(the texts as a list, whether one str was given); the tokenizer checks each text."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise InputError(f"texts is a {type(texts).__name__}, expected a str or a list of str")
    texts = list(texts)
    if not texts:
        raise InputError("texts is empty: nothing to run")
    return texts, False
