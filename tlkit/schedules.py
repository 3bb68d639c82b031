"""Learning-rate schedules as pure functions of training progress.

Each schedule maps ``step`` (0-based optimizer step) and ``total`` steps to a multiplier of a
param group's base LR, so layer-wise LR ratios survive every schedule. They are plain functions:
easy to test, plot and reuse in callbacks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from tlkit.errors import TlkitError, unknown_name

__all__ = [
    "SCHEDULES",
    "constant",
    "cosine",
    "cycle_bounds",
    "cyclic_cosine",
    "exponential",
    "make_schedule",
    "step",
    "with_warmup",
]

Schedule = Callable[[int, int], float]


def constant(step: int, total: int) -> float:
    """Always 1."""
    return 1.0


def cosine(step: int, total: int, final: float = 0.0) -> float:
    """Half a cosine from 1 at step 0 to ``final`` at ``total``."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def exponential(step: int, total: int, gamma: float = 0.9, steps_per_epoch: int = 1) -> float:
    """``gamma ** (step / steps_per_epoch)``: decays by ``gamma`` every epoch, smoothly per step."""
    return gamma ** (step / max(steps_per_epoch, 1))


def step(step: int, total: int, gamma: float = 0.1, every: int = 1) -> float:
    """``gamma ** floor(step / every)``: a staircase cut by ``gamma`` every ``every`` steps."""
    return gamma ** (step // max(every, 1))


def cycle_bounds(total: int, cycles: int) -> list[int]:
    """First step of each of ``cycles`` near-equal cycles over ``total`` steps, then ``total``.

    Cycle ``c`` (0-based) covers steps ``bounds[c] .. bounds[c + 1] - 1``.
    """
    cycles = max(int(cycles), 1)
    return [c * int(total) // cycles for c in range(cycles + 1)]


def cyclic_cosine(step: int, total: int, cycles: int, final: float = 0.0) -> float:
    """Cosine annealing with warm restarts: ``cycles`` equal cycles, each 1 -> ``final``.

    The schedule of snapshot ensembles (Huang et al. 2017) and SGDR without cycle growth: every
    cycle restarts at 1 and anneals along half a cosine towards ``final``.
    """
    bounds = cycle_bounds(total, cycles)
    index = bisect.bisect_right(bounds, step) - 1
    index = min(max(index, 0), len(bounds) - 2)
    start, end = bounds[index], bounds[index + 1]
    return cosine(step - start, end - start, final)


def with_warmup(schedule: Schedule, warmup: int) -> Schedule:
    """Linear warmup from ``1/(warmup+1)`` to 1 over ``warmup`` steps, then ``schedule``.

    The wrapped schedule sees the steps after warmup, so it still ends where it would.
    """
    if warmup <= 0:
        return schedule

    def warmed(i: int, total: int) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        return schedule(i - warmup, max(total - warmup, 1))

    return warmed


SCHEDULES = ("constant", "cosine", "exponential", "step")


def make_schedule(
    name: str,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    gamma: float | None = None,
    step_epochs: int = 10,
    final: float = 0.0,
) -> Schedule:
    """Build a per-step schedule from epoch-based settings.

    Args:
        name: One of :data:`SCHEDULES`.
        steps_per_epoch: Optimizer steps in one epoch.
        warmup_epochs: Linear warmup length in epochs (fractions allowed).
        gamma: Decay factor per epoch (``exponential``) or per ``step_epochs`` (``step``);
            defaults 0.9 and 0.1.
        step_epochs: Epochs between cuts of the ``step`` schedule.
        final: Final multiplier of ``cosine``.

    Returns:
        ``(step, total) -> multiplier``.
    """
    if name not in SCHEDULES:
        raise unknown_name("scheduler", name, SCHEDULES)
    if warmup_epochs < 0:
        raise TlkitError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    spe = max(int(steps_per_epoch), 1)
    if name == "constant":
        base: Schedule = constant
    elif name == "cosine":
        base = lambda i, total: cosine(i, total, final)  # noqa: E731
    elif name == "exponential":
        g = 0.9 if gamma is None else gamma
        base = lambda i, total: exponential(i, total, g, spe)  # noqa: E731
    else:
        g = 0.1 if gamma is None else gamma
        base = lambda i, total: step(i, total, g, spe * max(step_epochs, 1))  # noqa: E731
    return with_warmup(base, round(warmup_epochs * spe))
