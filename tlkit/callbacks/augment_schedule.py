"""AugmentationSchedule: switch the training augmentation pipeline at given epochs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
from lightning.pytorch.callbacks import Callback

from tlkit.errors import TlkitError, unknown_name
from tlkit.transforms import (
    AUGMENT_PRESETS,
    PIPELINE_FILE_SUFFIXES,
    PipelineSpec,
    ScheduledPipeline,
    TrainScheduleTarget,
    complete_pipeline,
    load_pipeline,
    train_transform,
)

__all__ = ["AugmentationSchedule", "datamodule_spec"]


def datamodule_spec(trainer: L.Trainer) -> PipelineSpec | None:
    """The datamodule's image size and normalisation (``TransferDataModule.spec``), if any."""
    spec = getattr(trainer.datamodule, "spec", None)
    return spec if isinstance(spec, PipelineSpec) else None


def _with_transform(dataset: Any) -> Any:
    """``dataset`` or the first dataset it wraps (``Subset.dataset``...) with a ``transform``."""
    while dataset is not None and not hasattr(dataset, "transform"):
        dataset = getattr(dataset, "dataset", None)
    return dataset


def _check_value(value: Any, epoch: int) -> Any:
    """A schedule value as a preset name or an albumentations pipeline."""
    if isinstance(value, (A.BaseCompose, A.BasicTransform)):
        return value
    if isinstance(value, (str, Path)):
        text = str(value)
        if Path(text).suffix.lower() in PIPELINE_FILE_SUFFIXES:
            return load_pipeline(text)
        if text in AUGMENT_PRESETS:
            return text
        raise unknown_name(
            f"augmentation preset (schedule epoch {epoch})",
            text,
            AUGMENT_PRESETS,
            "or pass a .yaml/.json pipeline file",
        )
    raise TlkitError(
        f"AugmentationSchedule: epoch {epoch} maps to {type(value).__name__}; pass a preset "
        "name, an albumentations pipeline or a pipeline file"
    )


def _epoch_key(epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, str)):
        raise TlkitError(f"AugmentationSchedule: schedule key {epoch!r} is not an epoch")
    try:
        return int(epoch)
    except ValueError as err:
        raise TlkitError(f"AugmentationSchedule: schedule key {epoch!r} is not an epoch") from err


def resolve_epochs(schedule: Mapping[int, Any], max_epochs: int | None) -> list[tuple[int, Any]]:
    """``schedule`` with negative epochs counted from ``max_epochs``, sorted by epoch."""
    resolved: dict[int, Any] = {}
    for key, value in schedule.items():
        epoch = key
        if key < 0:
            if max_epochs is None or max_epochs < 0:
                raise TlkitError(
                    f"AugmentationSchedule: epoch {key} counts from the end, but the fit "
                    "has no trainer.max_epochs"
                )
            epoch = max_epochs + key
        if epoch < 0 or epoch in resolved:
            raise TlkitError(
                f"AugmentationSchedule: schedule epoch {key} resolves to epoch {epoch}, "
                f"which is negative or used twice (max_epochs={max_epochs})"
            )
        resolved[epoch] = value
    return sorted(resolved.items(), key=lambda item: item[0])


class AugmentationSchedule(Callback):
    """Switch the training augmentation pipeline at given epochs.

    ``{0: "heavy", 5: "light", -2: "none"}`` trains epochs 0-4 with the ``heavy`` preset, then
    ``light``, and the last two epochs without augmentation (a negative epoch counts from
    ``trainer.max_epochs``). Epochs before the first key keep the dataset's own pipeline.
    Values are preset names (``none``, ``light``, ``medium``, ``heavy``), albumentations
    pipelines, or paths of pipelines saved with ``A.save`` (see
    :func:`tlkit.transforms.load_pipeline`); a pipeline that does not end in ``ToTensorV2`` is
    completed by :func:`tlkit.transforms.complete_pipeline`. Presets and augmentations-only
    pipelines need a :class:`tlkit.TransferDataModule` for size and normalisation.

    With a :class:`tlkit.TransferDataModule` the callback hands it the schedule once, at setup
    (:meth:`~tlkit.TransferDataModule.set_train_schedule`): every training image carries its
    epoch, so DataLoader workers and resumed fits use that epoch's pipeline, seeded per image.
    A training DataLoader passed to ``fit`` directly must have a dataset with a ``transform``
    called as ``transform(image)`` or ``transform(image=image)``; with workers, call
    :meth:`attach` first. Its transform then follows the epoch the callback sets at each epoch
    start (and restores from a checkpoint). The original transform is put back when the fit ends.

    Args:
        schedule: First epoch -> preset name, pipeline or pipeline file.
    """

    def __init__(self, schedule: Mapping[int, Any]) -> None:
        if not isinstance(schedule, Mapping) or not schedule:
            raise TlkitError(
                "AugmentationSchedule: schedule must be a non-empty mapping epoch -> pipeline, "
                "e.g. {0: heavy, 5: light, -2: none}"
            )
        self.schedule: dict[int, Any] = {}
        for epoch, value in schedule.items():
            key = _epoch_key(epoch)
            self.schedule[key] = _check_value(value, key)
        self._stages: list[tuple[int, Any]] = []
        self._attached: Any = None
        self._transform: ScheduledPipeline | None = None
        self._target: Any = None
        self._original: Any = None
        self._epoch = 0

    def attach(self, dataset: Any) -> None:
        """Use ``dataset``'s transform (for a training DataLoader passed to ``fit`` directly)."""
        found = _with_transform(dataset)
        if found is None:
            raise TlkitError(
                f"AugmentationSchedule: {type(dataset).__name__} has no transform to schedule"
            )
        self._attached = found

    def describe(self, epoch: int) -> str:
        """Name of the pipeline of ``epoch`` (``"dataset"`` before the first key)."""
        chosen = "dataset"
        for start, value in self._stages:
            if epoch >= start:
                chosen = value if isinstance(value, str) else type(value).__name__
        return chosen

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._stages = resolve_epochs(self.schedule, trainer.max_epochs)
        if self._attached is not None:
            self._install_transform(self._attached, trainer)
        elif isinstance(trainer.datamodule, TrainScheduleTarget):
            self._transform = self._scheduled(trainer, fallback=None)
            self._target = trainer.datamodule
            self._target.set_train_schedule(self._transform)

    def _build(self, value: Any, spec: PipelineSpec | None) -> A.BaseCompose:
        if isinstance(value, str):
            if spec is None:
                raise TlkitError(
                    f"AugmentationSchedule: preset {value!r} needs a TransferDataModule for "
                    "image size and normalisation; pass albumentations pipelines instead"
                )
            return train_transform(spec, value)
        return complete_pipeline(value, spec)

    def _scheduled(self, trainer: L.Trainer, fallback: Any) -> ScheduledPipeline:
        spec = datamodule_spec(trainer)
        stages = [(start, self._build(value, spec)) for start, value in self._stages]
        scheduled = ScheduledPipeline(stages, fallback)
        scheduled.set_epoch(self._epoch)
        return scheduled

    def _install_transform(self, dataset: Any, trainer: L.Trainer) -> None:
        """Schedule a plain dataset by replacing its ``transform``."""
        self._restore()
        self._original = dataset.transform
        self._transform = self._scheduled(trainer, fallback=self._original)
        self._target = dataset
        dataset.transform = self._transform

    def _restore(self) -> None:
        if isinstance(self._target, TrainScheduleTarget):
            self._target.set_train_schedule(None)
        elif self._target is not None and self._target.transform is self._transform:
            self._target.transform = self._original
        self._target = self._original = self._transform = None

    def _check_training_data(self, trainer: L.Trainer) -> None:
        """Refuse training data the schedule does not reach; schedule a late plain dataset."""
        loader = trainer.train_dataloader
        dataset = _with_transform(getattr(loader, "dataset", None))
        if dataset is None:
            inner = type(getattr(loader, "dataset", loader)).__name__
            raise TlkitError(
                f"AugmentationSchedule: the training data ({inner}) has no image transform to "
                "work on; with a frozen backbone TransferDataModule trains on cached features: "
                "pass `cache_features=False`"
            )
        if self._transform is not None:
            return
        if getattr(loader, "num_workers", 0) > 0:
            raise TlkitError(
                "AugmentationSchedule: the training DataLoader's workers started before the "
                "schedule could reach its dataset; use a TransferDataModule, call "
                "AugmentationSchedule.attach(dataset) before fit, or use num_workers=0"
            )
        self._install_transform(dataset, trainer)

    def _set_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if self._transform is not None:
            self._transform.set_epoch(epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_training_data(trainer)
        self._set_epoch(trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set_epoch(trainer.current_epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        """The epoch whose pipeline plain datasets use next."""
        return {"epoch": self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._set_epoch(int(state_dict.get("epoch", 0)))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()
