"""Hand the data module a frozen backbone's feature extractor, so training reads cached features.

The module offers the extractor (or ``None`` when its backbone trains); the data module decides
whether its own settings allow caching. The data never reaches for the model: this callback,
installed by :meth:`TransferModule.configure_callbacks`, gives it what it needs at setup.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Callback

from tlkit.data.datamodule import TransferDataModule
from tlkit.data.features import FeatureExtractor

__all__ = ["CachedFeatures"]


class CachedFeatures(Callback):
    """At setup, give a :class:`TransferDataModule` the extractor, its device and the processes.

    Args:
        extractor: Returns the frozen ``images -> features`` map, or ``None`` when the features
            change during training; called at setup when the data caches features (it hashes
            the current weights).
        full_batch: Train on the whole training set as one batch (full-batch L-BFGS).
    """

    def __init__(
        self, extractor: Callable[[], FeatureExtractor | None], full_batch: bool = False
    ) -> None:
        self.extractor = extractor
        self.full_batch = full_batch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if isinstance(datamodule, TransferDataModule):
            extractor = self.extractor() if datamodule.caches_features else None
            device = trainer.strategy.root_device
            datamodule.use_features(
                extractor, device, full_batch=self.full_batch, collective=trainer.strategy
            )
