"""Albumentations pipelines sized and normalised from a backbone's timm data config."""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np
import timm
import torch
from albumentations.pytorch import ToTensorV2

from tlkit.errors import TlkitError, unknown_name

__all__ = [
    "AUGMENT_PRESETS",
    "Pipeline",
    "PipelineSpec",
    "build_pipeline",
    "data_config_for",
    "eval_transform",
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
                f"image size must be positive, got {image_size}; pass --image-size 224"
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
