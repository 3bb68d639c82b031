"""The LR range test (Lightning's LR finder) with a corrected curve and a robust suggestion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.tuner import Tuner
from rich.console import Console

from tlkit.errors import TlkitError
from tlkit.report import lr_find_png

__all__ = ["find_lr", "valley"]


def valley(losses: Sequence[float]) -> int:
    """Index of fastai's "valley" LR: the longest decreasing run of the loss (as a longest
    decreasing subsequence), two thirds of the way down. Robust to the noise that makes the
    steepest-gradient rule pick a point on the flat start of the curve."""
    finite = [x if x == x and abs(x) != float("inf") else float("inf") for x in losses]
    lengths = [1] * len(finite)
    start = end = 0
    for i in range(1, len(finite)):
        for j in range(i):
            if finite[i] < finite[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
        if lengths[end] < lengths[i]:
            end, start = i, i - lengths[i]
    third = (end - start) / 3
    return min(max(start + int(third) + int(third / 2), 0), len(finite) - 1)


def _unbiased(smoothed: list[float], lrs: list[float], beta: float = 0.98) -> list[float]:
    """Redo the LR finder's loss smoothing with the right bias-correction exponent.

    Lightning divides the running average of step ``i`` (0-based) by ``1 - beta**(i + 2)``
    instead of ``1 - beta**(i + 1)`` (the step counter has already advanced; Lightning issue
    #14167), so its smoothed curve starts at half the loss and climbs, which moves the
    suggestion. Undo that factor and apply the right one.
    """
    return [
        value * (1 - beta ** (i + 2)) / (1 - beta ** (i + 1)) for i, value in enumerate(smoothed)
    ][: len(lrs)]


def find_lr(trainer, model, datamodule, plot: Path | None = None) -> float:
    """Lightning's LR range test on this model and data; the suggestion becomes ``model.lr``.

    The search runs one LR for every param group; layer-wise LR decay is applied to the result.
    The suggestion is fastai's "valley": two thirds down the longest descent of the loss.

    Args:
        trainer: The trainer that will fit the model.
        model: A TransferModule (its ``hparams.lr`` is set to the suggestion).
        datamodule: The data.
        plot: Where to save the loss-vs-LR plot (rank zero).

    Returns:
        The suggested learning rate.
    """
    if model.full_batch:
        raise TlkitError("the LR finder does not apply to the lbfgs optimizer (it needs no LR)")
    epochs = trainer.fit_loop.max_epochs
    trainer.fit_loop.max_epochs = 10**6  # small datasets: the search may span many epochs
    try:
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, attr_name="lr")
    finally:
        trainer.fit_loop.max_epochs = epochs
    if finder is None or len(finder.results.get("lr", [])) < 10:
        raise TlkitError("the LR finder ran too few steps; set `lr=VALUE` instead of finding it")
    lrs = list(finder.results["lr"])
    losses = _unbiased(finder.results["loss"], lrs)
    index = valley(losses)
    suggestion = float(lrs[index])
    model.hparams.lr = suggestion
    if plot is not None and trainer.is_global_zero:
        lr_find_png(lrs, losses, index, plot)
        Console(stderr=True).print(f"LR finder suggests lr = [cyan]{suggestion:.3g}[/]")
    return suggestion
