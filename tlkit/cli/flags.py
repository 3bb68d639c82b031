"""Library names -> command-line flags in error messages.

Library errors name what to change in the library's own terms, as a backquoted assignment:
``pass `weights=FILE` or `pretrained=False```. On the command line the same advice must name
flags, so :func:`as_flags` rewrites each such assignment for the command that failed:
``pass --weights FILE or --model.pretrained false``.
"""

from __future__ import annotations

import inspect
import re
from functools import cache

__all__ = ["as_flags"]

#: Top-level flags of tlkit's own commands (finetune, advise, predict, evaluate, export).
_OWN_FLAGS = {
    "backbone": "--backbone",
    "checkpoints": "--checkpoint",
    "data": "--data",
    "format": "--format",
    "image_size": "--image-size",
    "lr": "--lr",
    "max_epochs": "--epochs",
    "runtime": "--runtime",
    "shots": "--shots",
    "weights": "--weights",
}
#: Flags that take no value: ``name=True`` is the flag, ``name=False`` is leaving it out.
_SWITCHES = {"strict": "--strict", "trust": "--trust-weights", "trust_weights": "--trust-weights"}
#: Trainer arguments: ``--trainer.*`` flags on every command that trains.
_TRAINER = ("max_epochs", "max_steps")
_COMMANDS_WITH_OWN_FLAGS = ("finetune", "pretrain", "advise", "predict", "evaluate", "export")
_ASSIGNMENT = re.compile(r"`([A-Za-z_]\w*)=([^`]*)`")


@cache
def _parameters() -> dict[str, str]:
    """Parameter name -> ``model`` or ``data``: the LightningCLI's flag prefix for it."""
    from tlkit.data import TransferDataModule
    from tlkit.module import TransferModule

    found = {name: "data" for name in inspect.signature(TransferDataModule).parameters}
    found.update({name: "model" for name in inspect.signature(TransferModule).parameters})
    return found


def _flag(name: str, command: str) -> str | None:
    if command in _COMMANDS_WITH_OWN_FLAGS and name in _OWN_FLAGS:
        return _OWN_FLAGS[name]
    prefix = "trainer" if name in _TRAINER else _parameters().get(name)
    return f"--{prefix}.{name}" if prefix else None


def _render(match: re.Match[str], command: str) -> str:
    name, value = match.group(1), match.group(2)
    if name in _SWITCHES and value in ("True", "False"):
        return _SWITCHES[name] if value == "True" else f"drop {_SWITCHES[name]}"
    flag = _flag(name, command)
    if flag is None:
        return match.group(0)
    value = {"True": "true", "False": "false", "None": "null"}.get(value, value)
    return f"{flag} {value}"


def as_flags(message: str, command: str) -> str:
    """Rewrite the backquoted ``name=value`` assignments of a library message as flags.

    Args:
        message: The library's error message.
        command: The tlkit command that failed (``finetune``, ``fit``, ...): tlkit's own
            commands have short flags (``--lr``), the Lightning ones only ``--model.*`` and
            ``--data.*``.

    Returns:
        The message with every known assignment replaced by its flag; unknown names are kept.
    """
    if "`" not in message:
        return message
    return _ASSIGNMENT.sub(lambda m: _render(m, command), message)
