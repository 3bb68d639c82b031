"""Test-time augmentation: average predictions over mirrored images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from tlkit.errors import TlkitError, unknown_name
from tlkit.heads import log_mean_probabilities

__all__ = ["FlipTTA", "flip_averaged_logits"]


def flip_averaged_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, vertical: bool = False
) -> torch.Tensor:
    """Test-time augmentation: log of the mean softmax over the image and its mirror image(s).

    Args:
        forward: ``images -> logits``.
        images: ``(N, C, H, W)``.
        vertical: Also average the vertical flip (for top-down imagery).

    Returns:
        Log-probabilities; their ``softmax`` is the averaged probability.
    """
    if images.ndim != 4:
        raise TlkitError(
            f"flip test-time augmentation needs images (N, C, H, W), got shape "
            f"{tuple(images.shape)}; with cached features pass `cache_features=False`"
        )
    views = [images, images.flip(-1)]
    if vertical:
        views.append(images.flip(-2))
    return log_mean_probabilities(*(forward(v) for v in views))


class FlipTTA(Callback):
    """Average predictions over horizontally flipped images at evaluation time.

    Replaces the module's ``forward`` during the chosen stages with
    :func:`flip_averaged_logits`, so steps that call ``self(x)`` see flip-averaged outputs
    (log-probabilities) and every metric of those stages is the TTA one. During prediction the
    replacement sits inside any made by callbacks at ``on_predict_start`` (such as
    :class:`~tlkit.callbacks.SnapshotEnsemble`): each snapshot's outputs are flip-averaged.

    Args:
        stages: Any of ``validate`` (also during fit), ``test``, ``predict``.
        vertical: Also average the vertical flip.
    """

    STAGES = ("validate", "test", "predict")

    def __init__(self, stages: Sequence[str] = ("test", "predict"), vertical: bool = False):
        stages = [stages] if isinstance(stages, str) else list(stages)
        for stage in stages:
            if stage not in self.STAGES:
                raise unknown_name("FlipTTA stage", stage, self.STAGES)
        self.stages = tuple(stages)
        self.vertical = vertical
        self._restore: Callable[[], None] | None = None

    def _wrap(self, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in self.stages or self._restore is not None:
            return
        original = pl_module.forward
        had_own = "forward" in vars(pl_module)

        def forward(images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return flip_averaged_logits(
                lambda v: original(v, *args, **kwargs), images, self.vertical
            )

        def restore() -> None:
            if had_own:
                pl_module.forward = original
            else:
                del pl_module.forward

        pl_module.forward = forward
        self._restore = restore

    def _unwrap(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._wrap(pl_module, "validate")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wrap(pl_module, "test")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap()

    # Epoch hooks nest inside the ``on_predict_start``/``on_predict_end`` of callbacks that wrap
    # ``forward`` too (SnapshotEnsemble): wrappers are undone in the reverse order of wrapping.
    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._wrap(pl_module, "predict")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unwrap()
