"""Checks shared by the callbacks that set the learning rate over the whole fit."""

from __future__ import annotations

import math

import lightning as L

from tlkit.errors import TlkitError

__all__ = ["require_fit_end", "total_steps"]


def require_fit_end(trainer: L.Trainer, owner: str, consequence: str) -> None:
    """Refuse a fit without ``max_epochs`` or ``max_steps``, whose length ``owner`` needs.

    ``consequence`` says what would go wrong, e.g. ``"the schedule has no length"``.
    """
    endless = trainer.max_epochs is None or trainer.max_epochs < 0
    if endless and (trainer.max_steps is None or trainer.max_steps < 0):
        raise TlkitError(
            f"{owner}: the fit has no end, so {consequence}; "
            "set trainer.max_epochs or trainer.max_steps"
        )


def total_steps(trainer: L.Trainer, owner: str) -> int:
    """The fit's number of optimizer steps (``trainer.estimated_stepping_batches``)."""
    estimate = trainer.estimated_stepping_batches
    if not math.isfinite(estimate):
        raise TlkitError(
            f"{owner}: cannot tell how many optimizer steps the fit has; "
            "set trainer.max_epochs or trainer.max_steps"
        )
    return int(estimate)
