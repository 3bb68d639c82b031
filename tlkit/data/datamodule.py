"""TransferDataModule: a data source, splits, shots, transforms and the feature cache."""

from __future__ import annotations

import os
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tlkit.data.datasets import (
    DistributedEpochSampler,
    EpochKeyed,
    EpochSampler,
    ImageDataset,
)
from tlkit.data.decodable import (
    drop_undecodable,
    refuse_unusable,
    skip_undecodable,
    split_fix,
    undecodable,
)
from tlkit.data.features import (
    Collective,
    FeatureExtractor,
    ViewFeatures,
    cached_features,
    default_cache_dir,
)
from tlkit.data.sources import DataSource, Split, load_source, sample_shots, split_stratified
from tlkit.errors import TlkitError, check_number, check_type, unknown_name
from tlkit.transforms import (
    AUGMENT_PRESETS,
    PipelineSpec,
    ScheduledPipeline,
    build_pipeline,
    data_config_for,
    eval_transform,
    train_transform,
)

__all__ = ["TransferDataModule"]

_KEEP_DECODED_LIMIT = 20_000
#: Batch size for evaluating a head on cached features.
_FEATURE_EVAL_BATCH = 1024


class TransferDataModule(L.LightningDataModule):
    """Images from a folder, CSV, IDX files or the bundled demo, ready for a timm backbone.

    Args:
        data: ``demo`` (bundled Fashion-MNIST few-shot subset), ``fashion-mnist`` (the Debian
            package), an image folder (``root/train/<class>/...`` with optional ``val/`` and
            ``test/``, or ``root/<class>/...``), a folder of IDX files, or a ``path,label`` CSV.
        backbone: timm model name whose data config sets size, interpolation, mean and std.
        image_size: Overrides the backbone's input size (square).
        batch_size: Training batch size.
        num_workers: DataLoader workers; ``None`` picks 0 for small datasets, else up to 4.
        shots: Draw this many training images per class (seeded); ``None`` keeps all.
        val_fraction: Held out from train (stratified) when the source has no validation split.
        test_fraction: Held out from train (stratified) when the source has no test split.
        seed: Seed of the splits and the shot sampling.
        augment: Training augmentation preset: ``none``, ``light``, ``medium``, ``heavy``.
        strict: Stop on an undecodable image instead of skipping it.
        cache_features: Let a model with a frozen backbone train on cached features (only when
            the training transform is deterministic, i.e. ``augment: none``).
        cache_dir: Feature cache directory (default ``$TLKIT_CACHE_DIR`` or ``~/.cache/tlkit``).
        feature_views: With augmentation and a frozen backbone: cache this many augmented views
            of every training image (epoch ``e`` trains on view ``e % feature_views``), so
            augmentation survives caching. 1 (default) caches only un-augmented features.
    """

    def __init__(
        self,
        data: str = "demo",
        backbone: str = "tf_efficientnet_lite0",
        image_size: int | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        shots: int | None = None,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 42,
        augment: str = "light",
        strict: bool = False,
        cache_features: bool = True,
        cache_dir: str | None = None,
        feature_views: int = 1,
    ) -> None:
        super().__init__()
        check_type("data", data, (str, os.PathLike), "demo, fashion-mnist or a path")
        check_type("backbone", backbone, str, "a timm model name")
        if image_size is not None:
            check_number("image size", image_size, integer=True)
        check_number("batch size", batch_size, integer=True)
        if num_workers is not None:
            check_number("num_workers", num_workers, integer=True, minimum=0)
        if shots is not None:
            check_number("shots", shots, integer=True)
        check_number("val_fraction", val_fraction)
        check_number("test_fraction", test_fraction)
        check_number("seed", seed, integer=True, minimum=0, below=2**32)
        check_type("augment", augment, str, "an augmentation preset name")
        for name, flag in (("strict", strict), ("cache_features", cache_features)):
            check_type(name, flag, bool, "true or false")
        if cache_dir is not None:
            check_type("cache_dir", cache_dir, (str, os.PathLike), "a folder path")
        if augment not in AUGMENT_PRESETS:
            raise unknown_name("augmentation preset", augment, AUGMENT_PRESETS)
        if batch_size <= 0:
            raise TlkitError(f"batch size must be positive, got {batch_size}; pass e.g. 32")
        if feature_views < 1:
            raise TlkitError(f"feature_views must be >= 1, got {feature_views}")
        if shots is not None and shots <= 0:
            raise TlkitError(f"shots must be positive, got {shots}; pass e.g. `shots=5`")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 1.0:
                raise TlkitError(f"{name} must be between 0 and 1, got {value}")
        self.save_hyperparameters()
        self.spec = PipelineSpec(data_config_for(backbone), image_size)
        self.extractor: FeatureExtractor | None = None
        self.feature_device = torch.device("cpu")
        self.full_batch = False
        self.collective: Collective | None = None
        self.datasets: dict[str, Dataset] = {}
        self._decodable: dict[str, Split] | None = None
        self.given_splits: set[str] = set()  # the splits the data defines (set by `source`)

    @cached_property
    def source(self) -> DataSource:
        """The loaded source with train/val/test splits and shots applied."""
        hp = self.hparams
        src = load_source(hp.data)
        train, val, test = src.train, src.val, src.test
        if test is None:
            train, test = split_stratified(train, hp.test_fraction, hp.seed)
        if val is None:
            train, val = split_stratified(train, hp.val_fraction, hp.seed + 1)
        if hp.shots is not None:
            train = sample_shots(train, hp.shots, hp.seed, classes=src.classes)
        self.given_splits = set(src.splits())
        return DataSource(classes=src.classes, train=train, val=val, test=test, name=src.name)

    @property
    def num_classes(self) -> int:
        """Number of classes in the source."""
        return len(self.source.classes)

    @property
    def class_names(self) -> list[str]:
        """Class names, index order."""
        return list(self.source.classes)

    def check_images(self) -> dict[str, Split]:
        """The train/val/test splits without undecodable image files.

        Every file is probed once (the first call; :meth:`setup` calls it too): undecodable
        ones are skipped with a warning naming a few, or refused with ``strict``. Whatever the
        mode, undecodable files must leave a training image of every class and an image in
        every split.

        Returns:
            The decodable part of each split, keyed by ``train``, ``val``, ``test``.

        Raises:
            TlkitError: If no image decodes, a split or a class of the training split has no
                decodable image left, or (with ``strict``) any file does not decode.
        """
        if self._decodable is None:
            src = self.source
            splits = {"train": src.train, "val": src.val, "test": src.test}
            bad = {name: undecodable(split) for name, split in splits.items()}
            refuse_unusable(
                splits, bad, src.classes, src.name,
                partial(split_fix, data=self.hparams.data, given=self.given_splits),
            )  # fmt: skip
            strict = self.hparams.strict
            self._decodable = {k: skip_undecodable(k, v, bad[k], strict) for k, v in splits.items()}
        return self._decodable

    def describe(self) -> dict[str, Any]:
        """Sizes of the splits (without undecodable images once checked), for reports."""
        src = self.source
        splits = self._decodable or {"train": src.train, "val": src.val, "test": src.test}
        sizes = {f"num_{name}": len(split) for name, split in splits.items()}
        counts = [0] * len(src.classes)
        for label in splits["train"].labels:
            counts[label] += 1
        present = [c for c in counts if c]
        return {
            "data": src.name,
            "num_classes": len(src.classes),
            **sizes,
            "train_class_counts": counts,
            "imbalance_ratio": round(max(present) / min(present), 3) if present else 1.0,
            "image_size": self.spec.size,
        }

    def setup(self, stage: str) -> None:
        """Build the datasets; skip (or, with ``strict``, refuse) undecodable images."""
        src = self.source
        splits = self.check_images()
        keep = len(src.train) + len(src.val) + len(src.test) <= _KEEP_DECODED_LIMIT
        self.use_features(None)
        for name, split in splits.items():
            if name in self.datasets:
                continue
            if name == "train":
                transform = train_transform(self.spec, self.hparams.augment)
            else:
                transform = eval_transform(self.spec)
            self.datasets[name] = ImageDataset(
                split, build_pipeline(transform), keep_decoded=keep, seed=self.hparams.seed
            )

    def set_train_schedule(self, schedule: ScheduledPipeline | None) -> None:
        """Train each epoch on the pipeline ``schedule`` gives it (``None``: the preset).

        The training images carry their epoch, so DataLoader workers and resumed runs pick the
        epoch's pipeline (:class:`tlkit.callbacks.AugmentationSchedule` calls this at setup).

        Raises:
            TlkitError: If called before :meth:`setup` built the training dataset.
        """
        dataset = self.datasets.get("train")
        if not isinstance(dataset, ImageDataset):
            raise TlkitError("set_train_schedule needs the datasets: call setup('fit') first")
        dataset.set_schedule(schedule)

    @property
    def caches_features(self) -> bool:
        """True when these settings let a frozen backbone's features be cached."""
        hp = self.hparams
        return hp.cache_features and (hp.augment == "none" or hp.feature_views > 1)

    def use_features(
        self,
        extractor: FeatureExtractor | None,
        device: torch.device | str = "cpu",
        full_batch: bool = False,
        collective: Collective | None = None,
    ) -> None:
        """Serve cached features of ``extractor`` instead of images, where the settings allow.

        :meth:`setup` forgets it: the run's builder offers it after setup (``CachedFeatures``).

        Args:
            extractor: A frozen ``images -> features`` map, or ``None`` for images.
            device: Where the extractor runs.
            full_batch: Serve the whole training set as one batch (full-batch L-BFGS).
            collective: The run's processes (``trainer.strategy``): under DDP each extracts a
                shard of every split and the shards are gathered.

        Raises:
            TlkitError: If ``full_batch`` is asked for without cached features.
        """
        self.extractor = extractor if self.caches_features else None
        self.feature_device = torch.device(device)
        if full_batch and self.extractor is None:
            raise TlkitError(
                "full-batch L-BFGS needs cached features: set `augment=none` and "
                "`cache_features=True`"
            )
        self.full_batch = full_batch
        self.collective = collective

    def split_features(
        self, extractor: FeatureExtractor, device: torch.device | str = "cpu"
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Features of every split's decodable images under the evaluation transform.

        One pass over each split (or none, from the feature cache), for heads fitted outside
        the training loop (``solver: exact``).

        Args:
            extractor: The frozen ``images -> features`` function.
            device: Where the extractor runs.

        Returns:
            ``split -> (features (N, D), labels (N,))`` for ``train``, ``val`` and ``test``.
        """
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, split in self.check_images().items():
            if not len(split) and out:  # no val split: one image per class cannot spare one
                width = next(iter(out.values()))[0].shape[1]
                out[name] = (torch.zeros(0, width), torch.zeros(0, dtype=torch.long))
                continue
            dataset = ImageDataset(split, build_pipeline(eval_transform(self.spec)))
            features = self._cached(name, dataset, extractor, device)
            out[name] = (features.tensors[0], features.tensors[1])
        return out

    def drop_undecodable(self, name: str, split: Split) -> Split:
        """``split`` without the files that do not decode, with a warning naming a few of them.

        Args:
            name: What to call the split in the message (``train``, ``val``, ...).
            split: The split to check.

        Returns:
            The decodable part of ``split``.

        Raises:
            TlkitError: If no file of a non-empty ``split`` decodes, or (with ``strict``) if
                any file does not decode.
        """
        return drop_undecodable(name, split, self.hparams.strict)

    @property
    def num_workers(self) -> int:
        """Workers per DataLoader."""
        if self.hparams.num_workers is not None:
            return max(0, int(self.hparams.num_workers))
        if len(self.source.train) < 2_000:
            return 0
        return max(0, min(4, (os.cpu_count() or 1) - 1))

    def _dataset(self, name: str) -> Dataset:
        dataset = self.datasets[name]
        if self.extractor is None:
            return dataset
        hp = self.hparams
        views = hp.feature_views if name == "train" and hp.augment != "none" else 1
        return self._cached(name, dataset, self.extractor, self.feature_device, views)

    def _cached(
        self,
        name: str,
        dataset: ImageDataset,
        extractor: FeatureExtractor,
        device: torch.device | str,
        views: int = 1,
    ) -> Dataset:
        """The features of ``dataset`` (split ``name``), from the feature cache or one pass."""
        identity = {
            "data": DataSource(classes=self.source.classes, train=dataset.split).fingerprint(),
            "split": name,
            "transform": dataset.transform.to_dict(),
            "views": views,
            "seed": self.hparams.seed if views > 1 else None,
        }
        return cached_features(
            extractor,
            dataset,
            identity,
            Path(self.hparams.cache_dir) if self.hparams.cache_dir else default_cache_dir(),
            batch_size=max(64, self.hparams.batch_size),
            num_workers=self.num_workers,
            device=device,
            description=f"{name} features",
            views=views,
            collective=self.collective,
        )

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        dataset = self._dataset(name)
        batch_size = (
            len(dataset) if name == "train" and self.full_batch else self.hparams.batch_size
        )
        if not isinstance(dataset, ImageDataset):
            workers = 0  # cached features are tensors in memory: workers only add start-up
            if name != "train":
                # Evaluating a head on features is cheap per image and costly per step; the
                # batch size of evaluation changes no result.
                batch_size = max(batch_size, _FEATURE_EVAL_BATCH)
        if not isinstance(dataset, (ImageDataset, ViewFeatures)):
            dataset = EpochKeyed(dataset)
        world = self.trainer.world_size if self.trainer is not None else 1
        if world > 1:
            rank = self.trainer.global_rank
            sampler = DistributedEpochSampler(len(dataset), self.hparams.seed, shuffle, rank, world)
        else:
            sampler = EpochSampler(len(dataset), self.hparams.seed, shuffle=shuffle)
        if self.trainer is not None:
            # Workers draw their first keys when the loader is created, before Lightning's
            # set_epoch: start at the epoch the fit loop runs next (a resumed one included).
            sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=False,
            # Its own generator: starting to iterate never draws from the global RNG, which
            # the module reseeds per epoch for dropout (else a resumed epoch draws other masks).
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
