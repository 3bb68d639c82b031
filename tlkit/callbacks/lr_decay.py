"""LRDecay: a learning-rate schedule as a callback, for any optimizer and param groups."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.utilities import rank_zero_info

from tlkit.errors import TlkitError, unknown_name
from tlkit.scheduler import (
    base_lrs,
    fit_steps,
    install_schedule,
    refresh_schedule,
    require_fit_end,
)
from tlkit.schedules import Schedule, make_schedule

__all__ = ["LR_DECAY_SCHEDULES", "LRDecay"]

LR_DECAY_SCHEDULES = ("constant", "warmup", "cosine", "exponential", "step", "plateau")


class LRDecay(Callback):
    """Scale every param group's base LR by a schedule; log every group's LR.

    Base LRs are each group's ``initial_lr`` (set by torch schedulers) or its LR when training
    starts; they are stored in the checkpoint, so a resumed fit continues the same curve. When
    training starts the callback replaces the module's LR scheduler with a ``LambdaLR`` over its
    schedule (as Lightning's ``StochasticWeightAveraging`` swaps schedulers), so the torch
    scheduler stays the LR's one owner. The multipliers are the pure functions of
    :mod:`tlkit.schedules`.

    Schedules (``steps`` are optimizer steps, ``total`` the fit's, from
    ``trainer.estimated_stepping_batches``):

    - ``constant``: 1 (useful with ``warmup_epochs``).
    - ``warmup``: linear warmup over ``warmup_epochs`` (default 1), then 1.
    - ``cosine``: half a cosine from 1 to ``final`` over the fit.
    - ``exponential``: ``gamma`` (default 0.9) per epoch.
    - ``step``: ``gamma`` (default 0.1) every ``step_epochs`` epochs.
    - ``plateau``: 1, times ``factor`` each time ``monitor`` has not improved (by more than
      ``threshold``) for ``patience`` validation runs in a row, down to ``min_factor``.

    ``warmup_epochs`` adds a linear warmup in front of any schedule. With ``interval="epoch"``
    the multiplier is held for a whole epoch at its value of the epoch's first step; with
    ``"step"`` it changes every step (``exponential`` then decays smoothly within epochs).

    Args:
        schedule: One of :data:`LR_DECAY_SCHEDULES`.
        interval: ``step`` or ``epoch``: how often the LR changes.
        warmup_epochs: Linear warmup length in epochs (fractions allowed).
        gamma: Decay per epoch (``exponential``) or per ``step_epochs`` (``step``).
        step_epochs: Epochs between two cuts of ``step``.
        final: Final multiplier of ``cosine``.
        monitor: Metric ``plateau`` watches (logged during validation).
        mode: ``min`` or ``max``: whether lower or higher ``monitor`` is better.
        patience: Validation runs without improvement before ``plateau`` cuts the LR.
        factor: Multiplier applied at each ``plateau`` cut.
        threshold: Least change of ``monitor`` that counts as an improvement.
        min_factor: Lowest multiplier ``plateau`` cuts down to.
        log: Log ``lr/<group name or index>`` for every group at every step (left to a
            ``LearningRateMonitor`` when the trainer has one).
    """

    def __init__(
        self,
        schedule: str = "cosine",
        interval: str = "step",
        warmup_epochs: float = 0.0,
        gamma: float | None = None,
        step_epochs: int = 10,
        final: float = 0.0,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 3,
        factor: float = 0.1,
        threshold: float = 0.0,
        min_factor: float = 0.0,
        log: bool = True,
    ) -> None:
        if schedule not in LR_DECAY_SCHEDULES:
            raise unknown_name("LRDecay schedule", schedule, LR_DECAY_SCHEDULES)
        if interval not in ("step", "epoch"):
            raise TlkitError(f"LRDecay: interval must be 'step' or 'epoch', got {interval!r}")
        if not warmup_epochs >= 0:
            raise TlkitError(f"LRDecay: warmup_epochs must be >= 0, got {warmup_epochs}")
        if gamma is not None and not 0 < gamma <= 1:
            raise TlkitError(f"LRDecay: gamma must be in (0, 1], got {gamma}")
        if step_epochs < 1:
            raise TlkitError(f"LRDecay: step_epochs must be >= 1, got {step_epochs}")
        if not 0 <= final <= 1:
            raise TlkitError(f"LRDecay: final must be in [0, 1], got {final}")
        if mode not in ("min", "max"):
            raise TlkitError(f"LRDecay: mode must be 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise TlkitError(f"LRDecay: patience must be >= 1, got {patience}")
        if not 0 < factor < 1:
            raise TlkitError(f"LRDecay: factor must be in (0, 1), got {factor}")
        if threshold < 0:
            raise TlkitError(f"LRDecay: threshold must be >= 0, got {threshold}")
        if not 0 <= min_factor <= 1:
            raise TlkitError(f"LRDecay: min_factor must be in [0, 1], got {min_factor}")
        self.schedule = schedule
        self.interval = interval
        self.warmup_epochs = float(warmup_epochs or (1.0 if schedule == "warmup" else 0.0))
        self.gamma = gamma
        self.step_epochs = int(step_epochs)
        self.final = float(final)
        self.monitor = monitor
        self.mode = mode
        self.patience = int(patience)
        self.factor = float(factor)
        self.threshold = float(threshold)
        self.min_factor = float(min_factor)
        self.log = log
        self._base_lrs: list[list[float]] | None = None
        self._total: int | None = None
        self._steps_per_epoch: int | None = None
        self._curve: Schedule | None = None
        self._plateau_factor = 1.0
        self._best: float | None = None
        self._bad = 0
        self._logging = log

    # --- the curve -------------------------------------------------------------------------
    def factor_at(self, step: int, epoch: int) -> float:
        """The LR multiplier at optimizer step ``step`` of epoch ``epoch``."""
        if self._curve is None or self._steps_per_epoch is None or self._total is None:
            raise TlkitError("LRDecay: the schedule is known once training starts")
        at = epoch * self._steps_per_epoch if self.interval == "epoch" else step
        return self._curve(at, self._total) * self._plateau_factor

    def _build_curve(self) -> Schedule:
        base = "constant" if self.schedule in ("warmup", "plateau") else self.schedule
        return make_schedule(
            base,
            steps_per_epoch=self._steps_per_epoch or 1,
            warmup_epochs=self.warmup_epochs,
            gamma=self.gamma,
            step_epochs=self.step_epochs,
            final=self.final,
        )

    # --- fit -------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require_fit_end(trainer, "LRDecay", "the schedule has no length")
        if self.schedule == "plateau" and trainer.limit_val_batches == 0:
            raise TlkitError(
                "LRDecay: schedule 'plateau' watches a validation metric but validation is "
                "off (trainer.limit_val_batches=0); enable validation or pick another schedule"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._total is None:
            steps = fit_steps(trainer, "LRDecay")
            self._total, self._steps_per_epoch = steps.total, steps.per_epoch
        self._curve = self._build_curve()
        self._base_lrs = base_lrs(trainer, self._base_lrs, "LRDecay")
        if trainer.lr_scheduler_configs:
            rank_zero_info("LRDecay replaces the module's LR scheduler with its schedule")
        install_schedule(trainer, self._multiplier, self._base_lrs)
        monitors = (cb for cb in trainer.callbacks if isinstance(cb, LearningRateMonitor))
        self._logging = self.log and next(monitors, None) is None

    def _multiplier(self, step: int) -> float:
        spe = self._steps_per_epoch or 1
        return self.factor_at(step, step // spe)

    def _names(self, trainer: L.Trainer) -> list[list[str]]:
        many = len(trainer.optimizers) > 1
        names: list[list[str]] = []
        seen: set[str] = set()
        for j, optimizer in enumerate(trainer.optimizers):
            row = []
            for i, group in enumerate(optimizer.param_groups):
                name = str(group.get("name", i))
                name = f"opt{j}/{name}" if many else name
                if name in seen:
                    name = f"{name}#{i}"
                seen.add(name)
                row.append(f"lr/{name}")
            names.append(row)
        return names

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._logging:
            return
        values = {
            name: float(group["lr"])
            for optimizer, names in zip(trainer.optimizers, self._names(trainer), strict=True)
            for group, name in zip(optimizer.param_groups, names, strict=True)
        }
        pl_module.log_dict(values, on_step=True, on_epoch=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule != "plateau" or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            shown = ", ".join(sorted(metrics)) or "none"
            raise TlkitError(
                f"LRDecay: monitored metric {self.monitor!r} was not logged "
                f"(logged: {shown}); pass monitor=<one of them>"
            )
        if self.observe(float(metrics[self.monitor])):
            refresh_schedule(trainer)

    def observe(self, value: float) -> bool:
        """Feed one value of the monitored metric to ``plateau``; True when it cuts the LR."""
        sign = 1.0 if self.mode == "min" else -1.0
        if self._best is None or sign * (self._best - value) > self.threshold:
            self._best, self._bad = value, 0
            return False
        self._bad += 1
        if self._bad < self.patience:
            return False
        self._bad = 0
        if self._plateau_factor <= self.min_factor * (1 + 1e-9):
            return False
        new = max(self._plateau_factor * self.factor, self.min_factor)
        rank_zero_info(
            f"LRDecay: {self.monitor} has not improved for {self.patience} validation "
            f"runs; LR multiplier {self._plateau_factor:g} -> {new:g}"
        )
        self._plateau_factor = new
        return True

    # --- checkpointing ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "base_lrs": self._base_lrs,
            "total": self._total,
            "steps_per_epoch": self._steps_per_epoch,
            "plateau_factor": self._plateau_factor,
            "best": self._best,
            "bad": self._bad,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("schedule") != self.schedule:
            raise TlkitError(
                f"LRDecay: the checkpoint was written with schedule "
                f"{state_dict.get('schedule')!r}, this callback has {self.schedule!r}; "
                "resume with the same schedule"
            )
        self._base_lrs = state_dict["base_lrs"]
        self._total = state_dict["total"]
        self._steps_per_epoch = state_dict["steps_per_epoch"]
        self._plateau_factor = float(state_dict["plateau_factor"])
        self._best = state_dict["best"]
        self._bad = int(state_dict["bad"])
