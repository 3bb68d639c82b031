"""Torch datasets over a :class:`~tlkit.data.sources.Split`: images, and cached features."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from tlkit.data.images import load_image
from tlkit.data.sources import Split

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Decodes images (to RGB uint8), applies a transform, yields ``(tensor, label)``.

    Args:
        split: Items and labels.
        transform: ``HxWx3 uint8 array -> tensor``.
        keep_decoded: Keep decoded images in memory so later epochs skip decoding (for
            datasets that fit in memory; each DataLoader worker keeps its own copy).
    """

    def __init__(
        self,
        split: Split,
        transform: Callable[[np.ndarray], torch.Tensor],
        keep_decoded: bool = False,
    ) -> None:
        self.split = split
        self.transform = transform
        self.keep_decoded = keep_decoded
        self._decoded: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.split)

    def image(self, index: int) -> np.ndarray:
        """The decoded RGB image at ``index``."""
        cached = self._decoded.get(index)
        if cached is not None:
            return cached
        image = load_image(self.split.items[index])
        if self.keep_decoded:
            self._decoded[index] = image
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.image(index)), int(self.split.labels[index])
