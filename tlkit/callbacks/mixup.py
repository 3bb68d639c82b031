"""MixUp and CutMix: mix pairs of training samples and their labels, batch by batch.

MixUp (Zhang et al. 2018) blends two images, CutMix (Yun et al. 2019) pastes a box of one into
the other; the targets become the matching mixture of the two one-hot labels. Both come from
timm (:class:`timm.data.Mixup`, which pairs each sample with the batch reversed). Use the
function :func:`mix_batch` in a ``training_step``, or the :class:`MixUp` callback, which mixes
the batch in place before the step. Either way the loss must accept class-probability targets:
``F.cross_entropy`` does (``TransferModule``'s loss, label smoothing included), as does
:func:`soft_target_cross_entropy` (timm's :class:`~timm.loss.SoftTargetCrossEntropy`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from tlkit.errors import TlkitError

__all__ = ["MixUp", "mix_batch", "soft_target_cross_entropy"]

_SOFT_TARGET_CROSS_ENTROPY = SoftTargetCrossEntropy()


def _mixer(
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    switch_prob: float,
    label_smoothing: float,
) -> Mixup:
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        switch_prob=switch_prob,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )


def _apply(mixer: Mixup, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[Any, Any]:
    """``mixer`` on a copy of the batch; the draws come from torch's global RNG."""
    if mixer.cutmix_alpha > 0 and inputs.ndim != 4:
        raise TlkitError(
            f"CutMix needs images (N, C, H, W), got shape {tuple(inputs.shape)}; with cached "
            "features use MixUp only (cutmix_alpha=0)"
        )
    if targets.ndim != 1:
        raise TlkitError(
            f"MixUp needs class labels (N,), got targets of shape {tuple(targets.shape)}"
        )
    size = inputs.shape[0]
    # timm's Mixup refuses odd batches: a copy of the last sample becomes the first's partner.
    if size % 2:
        inputs, targets = torch.cat([inputs, inputs[-1:]]), torch.cat([targets, targets[-1:]])
    # timm draws from NumPy's global RNG; seeding it from torch's keeps the mixes repeatable
    # under the per-epoch torch seeding of a resumable run.
    state = np.random.get_state()
    np.random.seed(int(torch.randint(2**31 - 1, ())))
    try:
        mixed, soft = mixer(inputs.clone(), targets)
    finally:
        np.random.set_state(state)
    return mixed[:size], soft[:size]


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
    weight is drawn from ``Beta(alpha, alpha)`` and each sample is mixed with its mirror in the
    batch (timm's ``batch`` mode); the draws follow torch's global RNG, so ``seed_everything``
    makes them repeatable. ``inputs`` is left unchanged.

    Args:
        inputs: Images ``(N, C, H, W)`` (or features ``(N, D)`` for MixUp).
        targets: Labels ``(N,)``.
        num_classes: Number of classes.
        mixup_alpha: MixUp's Beta parameter (0: off).
        cutmix_alpha: CutMix's Beta parameter (0: off; both off: one-hot targets only).
        switch_prob: Probability of CutMix when both are on.
        label_smoothing: Smoothing of the targets before mixing.
    """
    prob = 1.0 if mixup_alpha > 0 or cutmix_alpha > 0 else 0.0
    mixer = _mixer(num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob, label_smoothing)
    return _apply(mixer, inputs, targets)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against class-probability targets ``(N, C)``."""
    return _SOFT_TARGET_CROSS_ENTROPY(logits, targets)


class MixUp(Callback):
    """Mix every training batch ``[inputs, targets]`` in place before the training step.

    The module's ``training_step`` then receives mixed inputs and class-probability targets
    ``(N, C)``: its loss must accept them (``F.cross_entropy`` does) and it must not compute
    label-based training metrics from them. Batches must be lists (PyTorch's default collate
    makes lists). If the module already smooths labels, leave ``label_smoothing`` at 0 here.
    Batches left unmixed (``prob`` < 1) get one-hot (smoothed) targets as well.

    Args:
        mixup_alpha: MixUp's Beta parameter (0: off).
        cutmix_alpha: CutMix's Beta parameter (0: off).
        prob: Probability that a batch is mixed at all.
        switch_prob: Probability of CutMix rather than MixUp when both are on.
        label_smoothing: Smoothing of the targets.
        num_classes: Number of classes; default the LightningModule's ``hparams["num_classes"]``
            (:class:`tlkit.TransferModule` saves it).
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
        self._mixer: Mixup | None = None
        self._stop: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        classes = self.num_classes
        if classes is None:
            classes = pl_module.hparams.get("num_classes")
            if classes is None:
                raise TlkitError(
                    "MixUp: cannot tell the number of classes (the module has no "
                    "hparams['num_classes']); pass num_classes=N"
                )
        self._mixer = _mixer(
            int(classes),
            self.mixup_alpha,
            self.cutmix_alpha,
            self.prob,
            self.switch_prob,
            self.label_smoothing,
        )
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
        if self._mixer is None or not self.active(trainer.current_epoch):
            return
        batch[0], batch[1] = _apply(self._mixer, batch[0], batch[1])
