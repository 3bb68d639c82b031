"""MixUp and CutMix: mix pairs of training samples and their labels, batch by batch.

MixUp (Zhang et al. 2018) blends two images, CutMix (Yun et al. 2019) pastes a box of one into
the other; the targets become the matching mixture of the two one-hot labels. Use the pure
function :func:`mix_batch` in a ``training_step``, or the :class:`MixUp` callback, which mixes
the batch in place before the step. Either way the loss must accept class-probability targets:
``F.cross_entropy`` does (``TransferModule``'s loss, label smoothing included), as does
:func:`soft_target_cross_entropy`.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from tlkit.errors import TlkitError

__all__ = ["MixUp", "cutmix", "mix_batch", "mixup", "one_hot", "soft_target_cross_entropy"]


def one_hot(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Class-probability targets from labels ``(N,)`` (soft targets ``(N, C)`` pass through).

    ``smoothing`` spreads that much probability mass evenly over all classes.
    """
    soft = targets.float() if targets.ndim == 2 else F.one_hot(targets.long(), num_classes)
    soft = soft.float()
    if smoothing > 0:
        soft = soft * (1.0 - smoothing) + smoothing / num_classes
    return soft


def _beta(alpha: float) -> float:
    dist = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    return float(dist.sample())


def mixup(
    inputs: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``lam * a + (1 - lam) * b`` for inputs and soft targets, ``b`` the batch permuted."""
    mixed = inputs.mul(lam).add_(inputs[perm], alpha=1.0 - lam)
    return mixed, targets * lam + targets[perm] * (1.0 - lam)


def cutmix(
    inputs: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random box covering about ``1 - lam`` of each image from the permuted batch.

    The target weights follow the box's actual area after clipping at the image border.
    """
    if inputs.ndim != 4:
        raise TlkitError(
            f"CutMix needs images (N, C, H, W), got shape {tuple(inputs.shape)}; with cached "
            "features use MixUp only (cutmix_alpha=0)"
        )
    height, width = inputs.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = round(height * cut), round(width * cut)
    cy = int(torch.randint(height, (1,)))
    cx = int(torch.randint(width, (1,)))
    y0, y1 = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
    x0, x1 = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
    mixed = inputs.clone()
    mixed[..., y0:y1, x0:x1] = inputs[perm][..., y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return mixed, targets * kept + targets[perm] * (1.0 - kept)


def mix_batch(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    mixup_alpha: float = 0.2,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with MixUp or CutMix; returns the inputs and class-probability targets.

    With both alphas positive, CutMix is picked with probability ``switch_prob``. The mixing
    weight is drawn from ``Beta(alpha, alpha)`` and the partner of each sample is a random
    permutation of the batch (torch's global RNG, so ``seed_everything`` makes it repeatable).

    Args:
        inputs: Images ``(N, C, H, W)`` (or features ``(N, D)`` for MixUp).
        targets: Labels ``(N,)`` or class probabilities ``(N, C)``.
        num_classes: Number of classes.
        mixup_alpha: MixUp's Beta parameter (0: off).
        cutmix_alpha: CutMix's Beta parameter (0: off).
        switch_prob: Probability of CutMix when both are on.
        label_smoothing: Smoothing of the targets before mixing.
    """
    soft = one_hot(targets, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return inputs, soft
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(())) < switch_prob)
    lam = _beta(cutmix_alpha if use_cutmix else mixup_alpha)
    perm = torch.randperm(inputs.shape[0]).to(inputs.device)
    if use_cutmix:
        return cutmix(inputs, soft, lam, perm)
    return mixup(inputs, soft, lam, perm)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against class-probability targets ``(N, C)``."""
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


class MixUp(Callback):
    """Mix every training batch ``[inputs, targets]`` in place before the training step.

    The module's ``training_step`` then receives mixed inputs and class-probability targets
    ``(N, C)``: its loss must accept them (``F.cross_entropy`` does) and it must not compute
    label-based training metrics from them. Batches must be lists (PyTorch's default collate
    makes lists). If the module already smooths labels, leave ``label_smoothing`` at 0 here.
    Batches left unmixed (``prob`` < 1) keep their labels unless ``label_smoothing`` is set.

    Args:
        mixup_alpha: MixUp's Beta parameter (0: off).
        cutmix_alpha: CutMix's Beta parameter (0: off).
        prob: Probability that a batch is mixed at all.
        switch_prob: Probability of CutMix rather than MixUp when both are on.
        label_smoothing: Smoothing of the targets.
        num_classes: Number of classes; default the datamodule's or the module's
            ``hparams.num_classes``.
        stop_epoch: Stop mixing from this epoch on (fine-tune on clean data at the end);
            negative counts from ``trainer.max_epochs``.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.0,
        num_classes: int | None = None,
        stop_epoch: int | None = None,
    ) -> None:
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not value >= 0:
                raise TlkitError(f"MixUp: {name} must be >= 0, got {value}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise TlkitError("MixUp: mixup_alpha and cutmix_alpha are both 0; set one, e.g. 0.2")
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0 <= value <= 1:
                raise TlkitError(f"MixUp: {name} must be in [0, 1], got {value}")
        if not 0 <= label_smoothing < 1:
            raise TlkitError(f"MixUp: label_smoothing must be in [0, 1), got {label_smoothing}")
        if num_classes is not None and num_classes < 2:
            raise TlkitError(f"MixUp: num_classes must be >= 2, got {num_classes}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = num_classes
        self.stop_epoch = stop_epoch
        self._classes: int | None = num_classes
        self._stop: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self._classes is None:
            found = getattr(trainer.datamodule, "num_classes", None)
            if found is None and isinstance(getattr(pl_module, "hparams", None), dict):
                found = pl_module.hparams.get("num_classes")
            if found is None:
                raise TlkitError("MixUp: cannot tell the number of classes; pass num_classes=N")
            self._classes = int(found)
        self._stop = self.stop_epoch
        if self.stop_epoch is not None and self.stop_epoch < 0:
            if trainer.max_epochs is None or trainer.max_epochs < 0:
                raise TlkitError(
                    f"MixUp: stop_epoch={self.stop_epoch} counts from the end, but the fit has "
                    "no trainer.max_epochs"
                )
            self._stop = trainer.max_epochs + self.stop_epoch

    def active(self, epoch: int) -> bool:
        """Whether batches of ``epoch`` are mixed."""
        return self._stop is None or epoch < self._stop

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, list) or len(batch) != 2:
            raise TlkitError(
                "MixUp: training batches must be lists [inputs, targets] (PyTorch's default "
                f"collate), got {type(batch).__name__}; call tlkit.callbacks.mix_batch in "
                "training_step instead"
            )
        if not self.active(trainer.current_epoch):
            return
        inputs, targets = batch
        if float(torch.rand(())) < self.prob:
            batch[0], batch[1] = mix_batch(
                inputs,
                targets,
                self._classes or 0,
                self.mixup_alpha,
                self.cutmix_alpha,
                self.switch_prob,
                self.label_smoothing,
            )
        elif self.label_smoothing > 0:
            batch[1] = one_hot(targets, self._classes or 0, self.label_smoothing)
