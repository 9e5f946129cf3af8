"""Errors that mean "the user asked for something that cannot be done as asked", and how they read."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message is one line naming the problem and the fix (CLI exit code 2)."""


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message must stay one readable line even
    when the value is a megabyte string or a huge nested list."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 1000:
        text = f"{type(value).__name__} of {len(value)} items"  # never build a huge repr to cut it
    else:
        text = repr(value)
    return clip(text, limit)


def clip(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters (with ``...`` where it was cut)."""
    text = " ".join(str(text).split())  # no newlines inside a one-line message
    return text if len(text) <= limit else text[: limit - 3] + "..."
