"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["TlkitError", "unknown_name"]


class TlkitError(Exception):
    """An error caused by user input or the environment, not by a bug.

    The CLI prints ``str(error)`` as a single line and exits with code 2 (no traceback unless
    ``--debug``). The message should name the problem and how to fix it.
    """

    exit_code = 2


def unknown_name(kind: str, name: str, choices: Iterable[str], hint: str = "") -> TlkitError:
    """Build the error for an unknown registry name, listing the close matches.

    Args:
        kind: What was looked up, e.g. ``"recipe"`` or ``"backbone"``.
        name: The name the user gave.
        choices: The valid names.
        hint: Extra advice appended to the message.

    Returns:
        A :class:`TlkitError` ready to raise.
    """
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.5)
    if close:
        msg = f"unknown {kind} '{name}'; did you mean: {', '.join(close)}?"
    else:
        shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
        msg = f"unknown {kind} '{name}'; choose one of: {shown}"
    if hint:
        msg += f" ({hint})"
    return TlkitError(msg)
