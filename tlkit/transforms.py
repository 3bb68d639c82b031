"""Albumentations pipelines: presets sized and normalised from a backbone's timm data config,
pipeline files, and training pipelines chosen by epoch.

Pipelines map an ``HxWx3 uint8`` array to a CHW tensor. Files are albumentations' own
serialisation (``A.save(pipeline, "aug.yaml", data_format="yaml")``, read by
:func:`load_pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import albumentations as A
import cv2
import numpy as np
import timm
import torch
from albumentations.pytorch import ToTensorV2

from tlkit.errors import TlkitError, unknown_name
from tlkit.utils import atomic_path

__all__ = [
    "AUGMENT_PRESETS",
    "PIPELINE_FILE_SUFFIXES",
    "Pipeline",
    "PipelineSpec",
    "ScheduledPipeline",
    "TrainScheduleTarget",
    "build_pipeline",
    "complete_pipeline",
    "data_config_for",
    "eval_transform",
    "load_pipeline",
    "save_pipeline",
    "train_transform",
]

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "area": cv2.INTER_AREA,
}

AUGMENT_PRESETS = ("none", "light", "medium", "heavy")


def data_config_for(backbone: str) -> dict[str, Any]:
    """The timm data config (input size, interpolation, mean, std, crop_pct) of a backbone name.

    Reads the model's ``pretrained_cfg`` without building the network.

    Args:
        backbone: A timm model name, optionally with a pretrained tag (``name.tag``).

    Returns:
        timm's resolved data config.
    """
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
        if cfg is None:
            base = backbone.split(".")[0]
            if not timm.is_model(base):
                raise unknown_name(
                    "backbone", backbone, timm.list_models(), "see timm.list_models()"
                )
            cfg = timm.models.get_pretrained_cfg(timm.models.get_arch_name(base)) or None
        if cfg is None:
            model = timm.create_model(backbone, pretrained=False, num_classes=0)
            return timm.data.resolve_data_config({}, model=model)
        return timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict())
    except RuntimeError as err:
        raise unknown_name(
            "backbone", backbone, timm.list_models(), "see timm.list_models()"
        ) from err


class PipelineSpec:
    """Image size and normalisation shared by the train and eval pipelines."""

    def __init__(self, data_config: dict[str, Any], image_size: int | None = None) -> None:
        _, height, width = data_config["input_size"]
        if image_size is not None and image_size <= 0:
            raise TlkitError(
                f"image size must be positive, got {image_size}; pass e.g. `image_size=224`"
            )
        self.size = int(image_size) if image_size else int(max(height, width))
        self.crop_pct = float(data_config.get("crop_pct", 0.875) or 1.0)
        self.mean = tuple(float(m) for m in data_config["mean"])
        self.std = tuple(float(s) for s in data_config["std"])
        self.interpolation = _INTERPOLATION.get(data_config.get("interpolation", "bilinear"), 1)

    def normalise(self) -> list[A.BasicTransform]:
        """Normalisation with the backbone's mean/std, then HWC uint8 -> CHW float tensor."""
        return [A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0), ToTensorV2()]

    def describe(self) -> dict[str, Any]:
        """Plain data that identifies the pipeline (used in cache keys and configs)."""
        return {"size": self.size, "crop_pct": self.crop_pct, "mean": self.mean, "std": self.std}


def eval_transform(spec: PipelineSpec) -> A.Compose:
    """Resize the short side to ``size / crop_pct`` then centre-crop ``size`` (timm's eval)."""
    resize = round(spec.size / spec.crop_pct)
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resize, interpolation=spec.interpolation),
            A.CenterCrop(height=spec.size, width=spec.size),
            *spec.normalise(),
        ]
    )


def train_transform(spec: PipelineSpec, preset: str = "light") -> A.Compose:
    """A named training augmentation preset.

    Args:
        spec: Size and normalisation.
        preset: ``none`` (the eval pipeline: deterministic, so frozen features can be cached),
            ``light`` (random resized crop + flip), ``medium`` (+ colour and affine jitter) or
            ``heavy`` (+ blur, noise and coarse dropout).

    Returns:
        An albumentations pipeline producing a normalised CHW tensor.
    """
    if preset not in AUGMENT_PRESETS:
        raise unknown_name("augmentation preset", preset, AUGMENT_PRESETS)
    if preset == "none":
        return eval_transform(spec)
    size, interp = (spec.size, spec.size), spec.interpolation
    scale = {"light": (0.5, 1.0), "medium": (0.35, 1.0), "heavy": (0.25, 1.0)}[preset]
    ops: list[A.BasicTransform] = [
        A.RandomResizedCrop(size=size, scale=scale, interpolation=interp),
        A.HorizontalFlip(p=0.5),
    ]
    if preset in ("medium", "heavy"):
        ops += [
            A.Affine(rotate=(-15, 15), translate_percent=(-0.05, 0.05), p=0.5),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
        ]
    if preset == "heavy":
        ops += [
            A.OneOf(
                [A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))], p=0.3
            ),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.05, 0.2),
                hole_width_range=(0.05, 0.2),
                p=0.5,
            ),
        ]
    return A.Compose([*ops, *spec.normalise()])


class Pipeline:
    """An albumentations pipeline as ``image -> tensor``, reproducible per call when seeded.

    ``pipeline(image, seed=k)`` draws the same augmentation for the same ``k`` whatever ran
    before, so an item's augmentation depends on (seed, epoch, index) alone: identical across
    DataLoader workers, DDP ranks and resumed runs.
    """

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self.compose.set_random_seed(seed)
        return self.compose(image=image)["image"]

    def to_dict(self) -> dict[str, Any]:
        """albumentations' own serialisation of the pipeline."""
        return A.to_dict(self.compose)


def build_pipeline(pipeline: A.Compose) -> Pipeline:
    """Wrap an albumentations pipeline as a seedable ``image -> tensor`` callable."""
    return Pipeline(pipeline)


PIPELINE_FILE_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


def _file_format(path: Path) -> str:
    fmt = PIPELINE_FILE_SUFFIXES.get(path.suffix.lower())
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
    fmt = _file_format(path)
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
    fmt = _file_format(path)
    with atomic_path(path) as tmp:
        A.save(pipeline, str(tmp), data_format=fmt)


def complete_pipeline(
    pipeline: A.BaseCompose | A.BasicTransform, spec: PipelineSpec | None
) -> A.BaseCompose:
    """Make an augmentations-only pipeline produce model input.

    A pipeline that ends in ``ToTensorV2`` is used as it is. Otherwise ``spec`` (the datamodule's
    size and normalisation) adds a resize of the short side to the image size, a centre crop
    (no-ops after a random crop to that size) and normalisation to a CHW tensor.
    """
    transforms = pipeline.transforms if isinstance(pipeline, A.BaseCompose) else [pipeline]
    if transforms and isinstance(transforms[-1], ToTensorV2):
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


class ScheduledPipeline:
    """Training pipelines chosen by epoch: ``stages`` ``[(first_epoch, pipeline), ...]``.

    :meth:`pipeline_for` is a pure function of the epoch, so a dataset whose items carry their
    epoch (:class:`tlkit.data.datasets.ImageDataset` under an epoch sampler) picks the right
    pipeline in any DataLoader worker and in a resumed run. Epochs before the first stage get
    ``fallback`` (``None``: the dataset's own transform).

    Called as a dataset transform (``transform(image)`` or ``transform(image=image)``), it uses
    the epoch of the last :meth:`set_epoch`, which lives in shared memory: DataLoader workers,
    persistent ones included, read the value the main process set before the epoch's batches
    were requested. Each worker reseeds the pipelines from its own seed, so workers draw
    different augmentations and ``seed_everything`` repeats them.

    Args:
        stages: First epoch -> albumentations pipeline (or :class:`Pipeline`).
        fallback: Transform of the epochs before the first stage.
    """

    def __init__(
        self,
        stages: Sequence[tuple[int, A.BaseCompose | Pipeline]],
        fallback: Callable[..., Any] | None = None,
    ) -> None:
        wrapped = [(int(k), p if isinstance(p, Pipeline) else Pipeline(p)) for k, p in stages]
        self.stages = sorted(wrapped, key=lambda item: item[0])
        self.fallback = fallback
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._seeded = -1
        self._seed(torch.initial_seed())

    @property
    def epoch(self) -> int:
        """The epoch used when the caller gives none (see :meth:`set_epoch`)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Use the pipeline of ``epoch`` for samples that do not carry their epoch."""
        self._epoch[0] = int(epoch)

    def pipeline_for(self, epoch: int) -> Pipeline | None:
        """The pipeline of ``epoch``, ``None`` before the first stage."""
        chosen = None
        for first, pipeline in self.stages:
            if epoch >= first:
                chosen = pipeline
        return chosen

    def _seed(self, seed: int) -> None:
        """Give every pipeline its own random stream derived from ``seed``."""
        self._seeded = seed
        for i, (_, pipeline) in enumerate(self.stages):
            pipeline.compose.set_random_seed((seed + 7919 * i) % 2**32)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._seeded:
            self._seed(worker.seed)
        chosen = self.pipeline_for(self.epoch)
        if chosen is None:
            if self.fallback is None:
                raise TlkitError("ScheduledPipeline: no pipeline before the first stage")
            return self.fallback(*args, **kwargs)
        if kwargs:
            return chosen.compose(**kwargs)
        return chosen(args[0])


@runtime_checkable
class TrainScheduleTarget(Protocol):
    """A datamodule that trains on the pipelines a :class:`ScheduledPipeline` gives each epoch."""

    def set_train_schedule(self, schedule: ScheduledPipeline | None) -> None:
        """Use ``schedule`` for the training data (``None``: the datamodule's own pipeline)."""
