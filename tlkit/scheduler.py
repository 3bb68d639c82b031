"""The learning rate's one owner: a ``LambdaLR`` over a pure schedule of the optimizer step.

The module configures one; a callback that schedules the LR itself (``LRDecay``,
``SnapshotEnsemble``) installs its own in the trainer's scheduler configs in its place, as
Lightning's ``StochasticWeightAveraging`` does, so checkpoints, resuming and
``LearningRateMonitor`` see a plain torch scheduler whoever set the curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig

from tlkit.errors import TlkitError

__all__ = [
    "FitSteps",
    "base_lrs",
    "fit_steps",
    "install_schedule",
    "refresh_schedule",
    "require_fit_end",
    "schedule_lr",
]


@dataclass(frozen=True)
class FitSteps:
    """How many optimizer steps a fit has.

    Attributes:
        total: Optimizer steps of the whole fit (``trainer.estimated_stepping_batches``).
        per_epoch: Optimizer steps in one epoch (at least 1).
    """

    total: int
    per_epoch: int


def require_fit_end(trainer: L.Trainer, owner: str, consequence: str) -> None:
    """Refuse a fit without ``max_epochs`` or ``max_steps``, whose length ``owner`` needs.

    ``consequence`` says what would go wrong, e.g. ``"the schedule has no length"``.
    """
    endless = trainer.max_epochs is None or trainer.max_epochs < 0
    if endless and (trainer.max_steps is None or trainer.max_steps < 0):
        raise TlkitError(
            f"{owner}: the fit has no end, so {consequence}; set `max_epochs=N` or `max_steps=N`"
        )


def fit_steps(trainer: L.Trainer, owner: str | None = None) -> FitSteps:
    """The fit's optimizer steps in all and per epoch.

    Args:
        trainer: A trainer whose training data is known (from ``configure_optimizers`` on).
        owner: Who asks, named in the error (``None``: the model).

    Raises:
        TlkitError: If the fit has no end.
    """
    estimate = trainer.estimated_stepping_batches
    if not math.isfinite(estimate):
        who = f"{owner}: " if owner else ""
        raise TlkitError(f"{who}training has no end: set `max_epochs=N` or `max_steps=N`")
    total = int(estimate)
    batches = trainer.num_training_batches
    if math.isfinite(batches):
        per_epoch = math.ceil(batches / max(int(trainer.accumulate_grad_batches), 1))
    else:
        per_epoch = total // max(int(trainer.max_epochs or 1), 1)
    return FitSteps(total, max(int(per_epoch), 1))


def schedule_lr(
    optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float], step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` giving every group ``initial_lr * multiplier(step)``, starting at ``step``.

    Groups without ``initial_lr`` take their current LR as base.
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier, last_epoch=step - 1)


def base_lrs(trainer: L.Trainer, stored: list[list[float]] | None, owner: str) -> list[list[float]]:
    """Base LR of every param group: ``stored`` (from a checkpoint), else the groups' own.

    A group's own base is its ``initial_lr`` (set by any torch scheduler) or its LR.

    Raises:
        TlkitError: If the optimizers' groups differ from ``stored``.
    """
    groups = [opt.param_groups for opt in trainer.optimizers]
    if stored is None:
        return [[float(g.get("initial_lr", g["lr"])) for g in gs] for gs in groups]
    if [len(gs) for gs in groups] != [len(b) for b in stored]:
        raise TlkitError(
            f"{owner}: the optimizers' param groups differ from the checkpoint's; "
            "resume with the same model and optimizer settings"
        )
    return stored


def install_schedule(
    trainer: L.Trainer, multiplier: Callable[[int], float], bases: list[list[float]]
) -> None:
    """Make a ``LambdaLR`` over ``multiplier`` the fit's only LR scheduler, from this step on.

    Every optimizer gets one, stepped after each optimizer step; the scheduler configs the
    module returned are replaced.

    Args:
        trainer: A trainer whose optimizers exist (``on_train_start``).
        multiplier: Optimizer step -> multiplier of each group's base LR.
        bases: Base LR of every group of every optimizer (:func:`base_lrs`).
    """
    configs = []
    for optimizer, row in zip(trainer.optimizers, bases, strict=True):
        for group, base in zip(optimizer.param_groups, row, strict=True):
            group["initial_lr"] = base
        scheduler = schedule_lr(optimizer, multiplier, trainer.global_step)
        configs.append(LRSchedulerConfig(scheduler, interval="step"))
    trainer.strategy.lr_scheduler_configs[:] = configs


def refresh_schedule(trainer: L.Trainer) -> None:
    """Let every scheduler set the LR of the current step again, after its curve changed."""
    for config in trainer.strategy.lr_scheduler_configs:
        config.scheduler.last_epoch -= 1
        config.scheduler.step()
