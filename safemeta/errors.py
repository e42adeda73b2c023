"""User-facing errors.

A `UserError` is a mistake in what the user asked for (a bad name, key, value or path). The CLI
prints its message as one paragraph and exits with code 2, never with a traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error in user input; the CLI reports it without a traceback and exits with code 2."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest choices, or '' if none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
