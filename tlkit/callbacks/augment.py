"""Augmentation callbacks: training pipelines by epoch and a preview grid of their output.

Pipelines are albumentations pipelines (``HxWx3 uint8 array -> CHW tensor``), named presets of
:mod:`tlkit.data.transforms` or files written with albumentations' own serialisation
(``A.save(pipeline, "aug.yaml", data_format="yaml")``, read back by :func:`load_pipeline`).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import lightning as L
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw

from tlkit.data.transforms import AUGMENT_PRESETS, PipelineSpec, train_transform
from tlkit.errors import TlkitError, unknown_name
from tlkit.utils import atomic_path

__all__ = [
    "AugmentationPreview",
    "AugmentationSchedule",
    "complete_pipeline",
    "load_pipeline",
    "save_pipeline",
]

_FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def _format(path: Path) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TlkitError(
            f"augmentation pipeline file {path} must end in .yaml, .yml or .json "
            "(albumentations serialisation)"
        )
    return fmt


def load_pipeline(path: str | Path) -> A.BaseCompose:
    """Read an albumentations pipeline written by ``A.save`` (YAML or JSON, by file suffix).

    Args:
        path: ``.yaml``/``.yml`` or ``.json`` file.

    Returns:
        The pipeline (a single transform is wrapped in ``A.Compose``).
    """
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise TlkitError(f"augmentation pipeline file not found: {path}")
    try:
        pipeline = A.load(str(path), data_format=fmt)
    except Exception as err:
        raise TlkitError(
            f"cannot read augmentation pipeline {path} ({type(err).__name__}: {err}); write it "
            f"with albumentations: A.save(pipeline, '{path.name}', data_format='{fmt}')"
        ) from err
    if isinstance(pipeline, A.BaseCompose):
        return pipeline
    if isinstance(pipeline, A.BasicTransform):
        return A.Compose([pipeline])
    raise TlkitError(f"{path} holds no albumentations pipeline")


def save_pipeline(pipeline: A.BaseCompose | A.BasicTransform, path: str | Path) -> None:
    """Write an albumentations pipeline as YAML or JSON (by suffix) for :func:`load_pipeline`."""
    path = Path(path)
    fmt = _format(path)
    with atomic_path(path) as tmp:
        A.save(pipeline, str(tmp), data_format=fmt)


def _ends_in_tensor(pipeline: A.BaseCompose | A.BasicTransform) -> bool:
    transforms = getattr(pipeline, "transforms", [pipeline])
    return bool(transforms) and isinstance(transforms[-1], ToTensorV2)


def complete_pipeline(
    pipeline: A.BaseCompose | A.BasicTransform, spec: PipelineSpec | None
) -> A.BaseCompose:
    """Make an augmentations-only pipeline produce model input.

    A pipeline that ends in ``ToTensorV2`` is used as it is. Otherwise ``spec`` (the datamodule's
    size and normalisation) adds a resize of the short side to the image size, a centre crop
    (no-ops after a random crop to that size) and normalisation to a CHW tensor.
    """
    if _ends_in_tensor(pipeline):
        return pipeline if isinstance(pipeline, A.BaseCompose) else A.Compose([pipeline])
    if spec is None:
        raise TlkitError(
            "an augmentation pipeline that does not end in ToTensorV2 needs the datamodule's "
            "image size and normalisation (a TransferDataModule); add resizing, A.Normalize "
            "and ToTensorV2 to it"
        )
    return A.Compose(
        [
            pipeline,
            A.SmallestMaxSize(max_size=spec.size, interpolation=spec.interpolation),
            A.CenterCrop(height=spec.size, width=spec.size),
            *spec.normalise(),
        ]
    )


def _spec_of(trainer: L.Trainer) -> PipelineSpec | None:
    spec = getattr(trainer.datamodule, "spec", None)
    return spec if isinstance(spec, PipelineSpec) else None


def _with_transform(dataset: Any) -> Any:
    """``dataset`` or the first dataset it wraps (``Subset.dataset``...) with a ``transform``."""
    while dataset is not None and not hasattr(dataset, "transform"):
        dataset = getattr(dataset, "dataset", None)
    return dataset


def _train_dataset(trainer: L.Trainer, owner: str) -> Any:
    """The dataset behind the training DataLoader that has a ``transform``."""
    loader = trainer.train_dataloader
    dataset = _with_transform(getattr(loader, "dataset", None))
    if dataset is None:
        inner = type(getattr(loader, "dataset", loader)).__name__
        raise TlkitError(
            f"{owner}: the training data ({inner}) has no image transform to work on; with a "
            "frozen backbone TransferDataModule trains on cached features: pass "
            "--data.cache_features false"
        )
    return dataset


def _datamodule_train_dataset(trainer: L.Trainer) -> Any:
    """The datamodule's training dataset: ``train_dataset`` or ``datasets["train"]``."""
    datamodule = trainer.datamodule
    dataset = getattr(datamodule, "train_dataset", None)
    if dataset is None:
        datasets = getattr(datamodule, "datasets", None)
        if isinstance(datasets, Mapping):
            dataset = datasets.get("train")
    return _with_transform(dataset)


class _ScheduledTransform:
    """A dataset transform that picks its pipeline by the epoch, read from shared memory.

    The main process publishes the epoch at each epoch start. DataLoader workers (persistent
    ones included) read it per sample; a worker asked for a sample between epochs, before the
    epoch is published, waits for it, so batches prefetched early still get their epoch's
    pipeline. The pipelines are seeded from torch's seed, and again in each worker from the
    worker's seed, so workers draw different augmentations and ``seed_everything`` repeats them.
    """

    WAIT_S = 60.0

    def __init__(self, fallback: Callable, stages: list[tuple[int, A.BaseCompose]]) -> None:
        self.fallback = fallback
        self.stages = stages
        self.state = torch.zeros(2, dtype=torch.int64).share_memory_()  # epoch, published
        self._seeded = -1
        self._seed(torch.initial_seed())

    def _seed(self, seed: int) -> None:
        """Give every pipeline its own random stream derived from ``seed``."""
        self._seeded = seed
        for i, (_, pipeline) in enumerate(self.stages):
            pipeline.set_random_seed((seed + 7919 * i) % 2**32)

    def publish(self, epoch: int) -> None:
        self.state[0] = epoch
        self.state[1] = 1

    def hold(self) -> None:
        self.state[1] = 0

    def _epoch(self) -> int:
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            if worker.seed != self._seeded:
                self._seed(worker.seed)
            deadline = time.monotonic() + self.WAIT_S
            while int(self.state[1]) == 0 and time.monotonic() < deadline:
                time.sleep(0.002)
        return int(self.state[0])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        epoch = self._epoch()
        chosen = None
        for start, pipeline in self.stages:
            if epoch >= start:
                chosen = pipeline
        if chosen is None:
            return self.fallback(*args, **kwargs)
        if kwargs:
            return chosen(**kwargs)
        return chosen(image=args[0])["image"]


class AugmentationSchedule(Callback):
    """Switch the training augmentation pipeline at given epochs.

    ``{0: "heavy", 5: "light", -2: "none"}`` trains epochs 0-4 with the ``heavy`` preset, then
    ``light``, and the last two epochs without augmentation (a negative epoch counts from
    ``trainer.max_epochs``). Epochs before the first key keep the dataset's own pipeline.
    Values are preset names (``none``, ``light``, ``medium``, ``heavy``), albumentations
    pipelines, or paths of pipelines saved with ``A.save`` (see :func:`load_pipeline`); a
    pipeline that does not end in ``ToTensorV2`` is completed by :func:`complete_pipeline`.

    The training dataset must expose a ``transform`` called either as ``transform(image)`` with
    an ``HxWx3 uint8`` array, returning a tensor (:class:`tlkit.data.datasets.ImageDataset`), or
    albumentations-style as ``transform(image=image)``; presets and augmentations-only
    pipelines need a :class:`tlkit.TransferDataModule` for size and normalisation.

    The callback takes the dataset from the datamodule (``train_dataset`` or
    ``datasets["train"]``) at setup, before any DataLoader worker starts, so workers (persistent
    ones included) switch too. With a DataLoader passed to ``fit`` directly, call
    :meth:`attach` first if it uses workers. The pipeline is a pure function of the epoch, so a
    resumed fit picks the right one. The original transform is put back when the fit ends.

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
            if isinstance(epoch, bool) or not isinstance(epoch, (int, str)):
                raise TlkitError(f"AugmentationSchedule: schedule key {epoch!r} is not an epoch")
            try:
                key = int(epoch)
            except ValueError as err:
                raise TlkitError(
                    f"AugmentationSchedule: schedule key {epoch!r} is not an epoch"
                ) from err
            self.schedule[key] = self._check(value, key)
        self._stages: list[tuple[int, Any]] = []
        self._attached: Any = None
        self._transform: _ScheduledTransform | None = None
        self._dataset: Any = None
        self._original: Any = None

    @staticmethod
    def _check(value: Any, epoch: int) -> Any:
        if isinstance(value, (A.BaseCompose, A.BasicTransform)):
            return value
        if isinstance(value, (str, Path)):
            text = str(value)
            if Path(text).suffix.lower() in _FORMATS:
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
        max_epochs = trainer.max_epochs
        resolved: dict[int, Any] = {}
        for key, value in self.schedule.items():
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
        self._stages = sorted(resolved.items(), key=lambda item: item[0])
        dataset = self._attached or _datamodule_train_dataset(trainer)
        if dataset is not None:
            self._install(dataset, trainer)

    def _build(self, value: Any, spec: PipelineSpec | None) -> A.BaseCompose:
        if isinstance(value, str):
            if spec is None:
                raise TlkitError(
                    f"AugmentationSchedule: preset {value!r} needs a TransferDataModule for "
                    "image size and normalisation; pass albumentations pipelines instead"
                )
            return train_transform(spec, value)
        return complete_pipeline(value, spec)

    def _install(self, dataset: Any, trainer: L.Trainer) -> None:
        self._restore()
        spec = _spec_of(trainer)
        stages = [(start, self._build(value, spec)) for start, value in self._stages]
        self._dataset, self._original = dataset, dataset.transform
        self._transform = _ScheduledTransform(self._original, stages)
        dataset.transform = self._transform

    def _restore(self) -> None:
        if self._dataset is not None and self._dataset.transform is self._transform:
            self._dataset.transform = self._original
        self._dataset = self._original = self._transform = None

    def _publish(self, trainer: L.Trainer) -> None:
        dataset = _train_dataset(trainer, "AugmentationSchedule")
        if self._transform is None or dataset.transform is not self._transform:
            if getattr(trainer.train_dataloader, "num_workers", 0) > 0:
                raise TlkitError(
                    "AugmentationSchedule: the training DataLoader's workers started before the "
                    "schedule could reach its dataset; expose it as datamodule.train_dataset, "
                    "call AugmentationSchedule.attach(dataset) before fit, or use num_workers=0"
                )
            self._install(dataset, trainer)
        if self._transform is not None:
            self._transform.publish(trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._publish(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._publish(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._transform is not None:
            self._transform.hold()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._restore()


@contextlib.contextmanager
def _kept_rng() -> Iterator[None]:
    """Leave the global random states (Python, NumPy, torch) as they were."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class AugmentationPreview(Callback):
    """Save a PNG grid of augmented training samples, de-normalised, when fitting starts.

    Samples are spread evenly over the training set and drawn through its current transform
    (after any :class:`AugmentationSchedule`), each captioned with its class. Rank zero writes.

    Args:
        n: Number of samples.
        path: PNG path; default ``augmentation-preview.png`` in the logger's directory (or
            ``trainer.default_root_dir``).
        tile: Side of each tile in pixels (samples are scaled with nearest-neighbour).
        mean: Normalisation mean to undo; default the datamodule's (a TransferDataModule).
        std: Normalisation std to undo; default the datamodule's. Without either, each image is
            min-max scaled.
    """

    def __init__(
        self,
        n: int = 16,
        path: str | None = None,
        tile: int = 96,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise TlkitError(f"AugmentationPreview: n must be an integer >= 1, got {n!r}")
        if path is not None and Path(path).suffix.lower() != ".png":
            raise TlkitError(f"AugmentationPreview: path must end in .png, got {path}")
        if isinstance(tile, bool) or not isinstance(tile, int) or tile < 8:
            raise TlkitError(f"AugmentationPreview: tile must be an integer >= 8, got {tile!r}")
        if (mean is None) != (std is None):
            raise TlkitError("AugmentationPreview: pass both mean and std, or neither")
        self.n = n
        self.path = path
        self.tile = tile
        self.mean = mean
        self.std = std
        self.written: Path | None = None
        self._pending = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pending = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._pending:
            return
        self._pending = False
        target = self._target(trainer)  # on every rank: trainer.log_dir is a collective
        if trainer.is_global_zero:
            self.written = self.render(trainer, target)

    def _target(self, trainer: L.Trainer) -> Path:
        if self.path is not None:
            return Path(self.path)
        root = trainer.log_dir or trainer.default_root_dir
        return Path(root) / "augmentation-preview.png"

    def _denormalise(self, trainer: L.Trainer) -> Callable[[torch.Tensor], np.ndarray]:
        spec = _spec_of(trainer)
        mean, std = self.mean, self.std
        if mean is None and spec is not None:
            mean, std = spec.mean, spec.std

        def to_uint8(x: torch.Tensor) -> np.ndarray:
            x = x.detach().float().cpu()
            if x.shape[0] == 1:
                x = x.expand(3, -1, -1)
            if mean is not None and std is not None:
                m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
                s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
                x = x * s + m
            else:
                x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
            image = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
            return image.numpy()

        return to_uint8

    def render(self, trainer: L.Trainer, path: str | Path | None = None) -> Path | None:
        """Draw the grid now and write it to ``path`` (default: see the class).

        Returns:
            The written path, or ``None`` when the training samples are not images.
        """
        dataset = trainer.train_dataloader.dataset
        count = min(self.n, len(dataset))
        indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
        with _kept_rng():
            samples = [dataset[int(i)] for i in indices]
        if not samples or not (torch.is_tensor(samples[0][0]) and samples[0][0].ndim == 3):
            rank_zero_warn(
                "AugmentationPreview: the training samples are not images (cached features?); "
                "no preview written"
            )
            return None
        names = getattr(trainer.datamodule, "class_names", None)
        to_uint8 = self._denormalise(trainer)
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        caption, pad = 14, 4
        cell_w, cell_h = self.tile + pad, self.tile + caption + pad
        sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), "white")
        draw = ImageDraw.Draw(sheet)
        for k, (image, label) in enumerate(samples):
            tile = Image.fromarray(to_uint8(image)).resize((self.tile, self.tile), Image.NEAREST)
            x, y = pad + (k % columns) * cell_w, pad + (k // columns) * cell_h
            sheet.paste(tile, (x, y))
            label = int(label)
            text = str(names[label]) if names and 0 <= label < len(names) else str(label)
            draw.text((x, y + self.tile + 1), text[: self.tile // 6], fill="black")
        target = Path(path) if path is not None else self._target(trainer)
        with atomic_path(target) as tmp:
            sheet.save(tmp, format="PNG")
        return target
