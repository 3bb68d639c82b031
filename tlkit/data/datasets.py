"""Torch datasets over a :class:`~tlkit.data.sources.Split`: images, and cached features."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from tlkit.data.images import load_image
from tlkit.data.splits import Split
from tlkit.transforms import Pipeline, ScheduledPipeline

__all__ = [
    "DistributedEpochSampler",
    "EpochKeyed",
    "EpochSampler",
    "ImageDataset",
    "item_seed",
]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one item in one epoch."""
    return (seed * 1_000_003 + epoch * 7_919 + index) % (2**32)


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys in a permutation fixed by ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every epoch, so the order and (through
    :class:`ImageDataset`) the augmentation of every epoch depend on the seed and epoch alone,
    never on the global RNG: a run resumed at epoch ``k`` sees exactly the batches an
    uninterrupted run sees.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, 0))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = range(self.size)
        return iter([(self.epoch, i) for i in order])


class DistributedEpochSampler(DistributedSampler):
    """An :class:`EpochSampler` order dealt out to the ranks of a distributed run.

    Rank ``r`` of ``world`` takes positions ``r, r + world, ...`` of the (seed, epoch) order,
    padded by wrapping around like :class:`~torch.utils.data.DistributedSampler`. Step ``k``
    of all ranks together therefore sees exactly batch ``k`` of a single process whose batch is
    ``world`` times larger, and a resumed distributed run the batches of an uninterrupted one.
    Being a ``DistributedSampler``, it is not wrapped again by Lightning.
    """

    def __init__(self, size: int, seed: int, shuffle: bool, rank: int, world: int) -> None:
        super().__init__(range(size), num_replicas=world, rank=rank, shuffle=False)
        self.order = EpochSampler(size, seed, shuffle)

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        super().set_epoch(epoch)
        self.order.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        keys = list(self.order)
        if keys and len(keys) < self.total_size:
            repeats = -(-self.total_size // len(keys))
            keys = (keys * repeats)[: self.total_size]
        return iter(keys[self.rank : self.total_size : self.num_replicas])


class EpochKeyed(Dataset):
    """Accepts ``(epoch, index)`` keys for a dataset indexed by plain integers."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        return self.dataset[key[1] if isinstance(key, tuple) else key]


class ImageDataset(Dataset):
    """Decodes images (to RGB uint8), applies a transform, yields ``(tensor, label)``.

    Args:
        split: Items and labels.
        transform: ``HxWx3 uint8 array -> tensor``; a :class:`~tlkit.transforms.Pipeline`
            is seeded per item and epoch when keys are ``(epoch, index)``.
        keep_decoded: Keep decoded images in memory so later epochs skip decoding (for
            datasets that fit in memory; each DataLoader worker keeps its own copy).
    """

    def __init__(
        self,
        split: Split,
        transform: Callable[[np.ndarray], torch.Tensor],
        keep_decoded: bool = False,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.transform = transform
        self.keep_decoded = keep_decoded
        self.seed = seed
        self.schedule: ScheduledPipeline | None = None
        self._decoded: dict[int, np.ndarray] = {}

    def set_schedule(self, schedule: ScheduledPipeline | None) -> None:
        """Transform each item by the pipeline ``schedule`` gives its epoch (``None``: stop).

        Epochs before the schedule's first stage keep :attr:`transform`. Items asked for by a
        plain index use the schedule's current epoch (:meth:`ScheduledPipeline.set_epoch`).
        """
        self.schedule = schedule

    def transform_for(self, epoch: int | None) -> Callable[..., torch.Tensor]:
        """The transform of an item of ``epoch`` (``None``: the schedule's current epoch)."""
        if self.schedule is None:
            return self.transform
        chosen = self.schedule.pipeline_for(self.schedule.epoch if epoch is None else epoch)
        return self.transform if chosen is None else chosen

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

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        image = self.image(index)
        transform = self.transform_for(epoch)
        if epoch is not None and isinstance(transform, Pipeline):
            tensor = transform(image, seed=item_seed(self.seed, epoch, index))
        else:
            tensor = transform(image)
        return tensor, int(self.split.labels[index])
