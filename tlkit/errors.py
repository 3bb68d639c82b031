"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import argparse
import difflib
import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__ = ["ArgumentParser", "TlkitError", "check_number", "check_type", "unknown_name"]


class TlkitError(Exception):
    """An error caused by user input or the environment, not by a bug.

    The CLI prints ``str(error)`` as a single line and exits with code 2 (no traceback unless
    ``--debug``). The message should name the problem and how to fix it.
    """

    exit_code = 2

    def __init__(self, message: str = "") -> None:
        # One line whatever the user typed: control characters (a newline in a name) are escaped.
        text = str(message)
        if not text.isprintable():
            text = "".join(
                c if c.isprintable() else c.encode("unicode_escape").decode() for c in text
            )
        super().__init__(text)


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a :class:`TlkitError` (one line, exit code 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise TlkitError(f"{message}; see `{self.prog} --help`")


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


def check_type(name: str, value: Any, types: type | tuple[type, ...], what: str) -> Any:
    """Return ``value`` if it is an instance of ``types``, else raise a TlkitError naming it.

    Args:
        name: The setting, e.g. ``"backbone"``.
        value: The value given.
        types: The accepted types.
        what: How to describe them in the message, e.g. ``"a timm model name"``.

    Returns:
        ``value``.
    """
    if not isinstance(value, types):
        raise TlkitError(f"{name} must be {what}, got {value!r}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> Any:
    """Return ``value`` if it is a finite number in range, else raise a TlkitError naming it.

    Booleans are not numbers here; NumPy scalars are. With ``integer`` a float must be whole.

    Args:
        name: The setting, e.g. ``"dropout"``.
        value: The value given.
        integer: Require an integer.
        minimum: Smallest allowed value.
        maximum: Largest allowed value.
        above: The value must be greater than this.
        below: The value must be less than this.

    Returns:
        ``value`` (an ``int`` when ``integer``).
    """
    kind = "an integer" if integer else "a number"
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or (integer and value != int(value)):
        raise TlkitError(f"{name} must be {kind}, got {value!r}")
    bounds = [
        (minimum, value >= minimum if minimum is not None else True, f">= {minimum}"),
        (maximum, value <= maximum if maximum is not None else True, f"<= {maximum}"),
        (above, value > above if above is not None else True, f"> {above}"),
        (below, value < below if below is not None else True, f"< {below}"),
    ]
    failed = [text for bound, ok, text in bounds if bound is not None and not ok]
    if failed:
        wanted = " and ".join(text for bound, _, text in bounds if bound is not None)
        raise TlkitError(f"{name} must be {wanted}, got {value!r}")
    return int(value) if integer else value
