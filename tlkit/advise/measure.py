"""Measure a dataset with a frozen backbone: pooled features of every stage, scored and decided."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlkit.advise.candidates import (
    LARGE_TOTAL,
    SMALL_PER_CLASS,
    Candidate,
    decide,
    expected_accuracy,
    score_candidates,
)
from tlkit.backbones import DEFAULT_BACKBONE, create_backbone
from tlkit.balance import advised_balance, balances_for, imbalance_ratio
from tlkit.data.datamodule import TransferDataModule
from tlkit.data.datasets import ImageDataset
from tlkit.data.features import (
    FeatureExtractor,
    cached_features,
    default_cache_dir,
    tensor_digest,
)
from tlkit.data.sources import DataSource, Split
from tlkit.errors import TlkitError
from tlkit.probe import cv_repeats, cv_rows, stratified_folds
from tlkit.runtimes import FrozenPass
from tlkit.transforms import build_pipeline, eval_transform

__all__ = ["StageFeatures", "measure", "stage_features"]


def stage_features(backbone: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Globally average-pooled features of every feature stage, then the final pooled features.

    Args:
        backbone: A timm model with ``forward_intermediates`` (``num_classes=0``), in eval mode.
        images: ``(N, C, H, W)`` batch.

    Returns:
        One ``(N, channels)`` tensor per entry of ``backbone.feature_info``, then the ``(N, D)``
        features the backbone's own pooling gives (what ``linear_probe`` reads).
    """
    final, intermediates = backbone.forward_intermediates(images)
    pooled = [t.mean(dim=(2, 3)) if t.ndim == 4 else t.mean(dim=1) for t in intermediates]
    return [*pooled, backbone.forward_head(final)]


class AllStages(torch.nn.Module):
    """:func:`stage_features` as one module: every stage's pooled features, then the top,
    concatenated."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(stage_features(self.backbone, images), dim=1)


@dataclass
class StageFeatures:
    """Pooled features of every stage (then the top) for each split, from one pass.

    Attributes:
        names: Stage module names, then ``top``.
        widths: Channels of each.
        splits: ``split name -> (features (N, sum(widths)), labels (N,))``.
    """

    names: list[str]
    widths: list[int]
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def blocks(self, split: str) -> list[torch.Tensor]:
        """The split's features cut into one tensor per stage (then the top)."""
        return list(torch.split(self.splits[split][0], self.widths, dim=1))

    def select(self, split: str, stages: Sequence[int | None]) -> torch.Tensor:
        """Features of ``stages`` (feature indices, ``None`` for the top), concatenated."""
        blocks = self.blocks(split)
        return torch.cat([blocks[-1] if s is None else blocks[s] for s in stages], dim=1)

    def labels(self, split: str) -> torch.Tensor:
        """Class index of each row of ``split``."""
        return self.splits[split][1]


def _extract(
    model: torch.nn.Module,
    backbone: str,
    dm: TransferDataModule,
    splits: dict[str, Split],
    widths: list[int],
    cache_dir: str | Path | None,
    batch_size: int,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """All-stage features of each split, from the cache or one pass over its images."""

    frozen = FrozenPass(AllStages(model), f"advise:{backbone}")
    extractor = FeatureExtractor(frozen, f"advise:{backbone}:{tensor_digest(model)}")
    store = Path(cache_dir) / "features" if cache_dir is not None else default_cache_dir()
    out = {}
    for name, split in splits.items():
        if not len(split):  # no val split: one image per class cannot spare one
            out[name] = (torch.zeros(0, sum(widths)), torch.zeros(0, dtype=torch.long))
            continue
        identity = {
            "data": DataSource(classes=dm.source.classes, train=split).fingerprint(),
            "transform": dm.spec.describe(),
            "stages": widths,
        }
        dataset = ImageDataset(split, build_pipeline(eval_transform(dm.spec)))
        features = cached_features(
            extractor, dataset, identity, store, batch_size=batch_size, description=f"{name} stages"
        )
        out[name] = (features.tensors[0], features.tensors[1])
    return out


def measure(
    data: str,
    backbone: str | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    shots: int | None = None,
    max_images: int = 2000,
    folds: int = 5,
    repeats: int | None = None,
    seed: int = 42,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    with_test: bool = False,
    datamodule: TransferDataModule | None = None,
    pretrained: bool = True,
) -> tuple[dict[str, Any], StageFeatures]:
    """Measure a dataset's size, score the frozen candidates and pick its cell of the matrix.

    Args:
        data: Anything :class:`~tlkit.data.TransferDataModule` accepts (``demo``, a folder...).
        backbone: timm model name (default :data:`~tlkit.backbones.DEFAULT_BACKBONE`), with its
            pretrained weights.
        image_size: Input size for the measurement (default: the backbone's).
        weights: Backbone weight file (default: the bundled or timm pretrained weights).
        shots: Training images per class that will be used (``--shots`` of ``finetune``);
            ``None`` counts the whole training split.
        max_images: Cap on the labelled images the folds are drawn from (stratified).
        folds: Folds of the stratified cross-validation.
        repeats: Repeats of the cross-validation (default: 3 up to 400 labelled images, 2 up
            to 1,000, else 1).
        seed: Seed of the splits, the subsample and the folds.
        batch_size: Inference batch size.
        cache_dir: Feature cache (default ``$TLKIT_CACHE_DIR``).
        with_test: Also extract the test split's features (for a run that fits and tests).
        datamodule: The run's data module (default: one built from the arguments above).
        pretrained: Load pretrained weights (``False``: the backbone's random init, for tests).

    Returns:
        The report (``cell``, ``recipe``, ``samples_per_class``, ``num_classes``,
        ``similarity``, ``probe_stage``, ``expected_accuracy`` and ``evidence``) and the
        features of the ``train`` and ``val`` splits (and ``test`` with ``with_test``).
    """
    if max_images < 2:
        raise TlkitError(f"max_images must be at least 2, got {max_images}")
    backbone = backbone or DEFAULT_BACKBONE
    dm = datamodule or TransferDataModule(
        data=data, backbone=backbone, image_size=image_size, shots=shots, seed=seed
    )
    num_classes = len(dm.source.classes)
    if num_classes < 2:
        raise TlkitError(f"need at least 2 classes to advise, found {num_classes} in {data}")
    decodable = dm.check_images()
    model, features = _stage_model(backbone, weights, pretrained)
    wanted = {k: decodable[k] for k in ("train", "val", "test")[: 3 if with_test else 2]}
    features.splits = _extract(model, backbone, dm, wanted, features.widths, cache_dir, batch_size)
    facts = {"image_size": dm.spec.size, "backbone": backbone}
    cv = _CrossValidation(max_images, folds, repeats, seed)
    held_out = 0 if "val" in dm.given_splits else len(decodable["val"])  # taken from train
    return _decided(cv, features, decodable, num_classes, with_test, facts, held_out), features


def _decided(
    cv: _CrossValidation,
    features: StageFeatures,
    decodable: dict[str, Split],
    num_classes: int,
    with_test: bool,
    facts: dict[str, Any],
    held_out_val: int = 0,
) -> dict[str, Any]:
    """Score the candidates on the shared folds, decide, and build the report (``facts``:
    the measurement's image size and backbone, for the evidence; ``held_out_val``: images the
    validation split took from train)."""
    counts = _class_counts(decodable["train"].labels, num_classes)
    candidates, labelled, k = cv.score(features)
    verdict = decide(candidates, counts.median, num_classes, len(decodable["train"]), 1.0 / k,
                     held_out_val)  # fmt: skip
    tested = len(decodable["test"]) if with_test else None
    expected = expected_accuracy(candidates, verdict["probe"], labelled, tested, 1.0 / k, cv.counts)
    report = _report(verdict, candidates, expected, counts.median, num_classes)
    if cv.balanced_score:
        report["evidence"]["reason"] += (
            f" The classes are imbalanced ({counts.minimum} to {max(counts.per_class)} training "
            f"images, {counts.ratio:.1f}x): the probes weigh every class equally and are scored "
            "on balanced accuracy, the accuracy a test set with equal classes gives."
        )
    report["evidence"].update(
        num_train=len(decodable["train"]),
        num_val=len(decodable["val"]),
        min_per_class=counts.minimum,
        class_counts=counts.per_class,
        imbalance_ratio=round(counts.ratio, 3),
        imbalanced=cv.balanced_score,
        images_measured=labelled,
        **facts,
        folds=k,
        repeats=cv.repeats,
    )
    return report


@dataclass(frozen=True)
class _Counts:
    """Labelled training images per class: the median (an int when whole), the minimum, each
    class's count and the largest over the smallest."""

    median: float | int
    minimum: int
    per_class: list[int]
    ratio: float


def _class_counts(labels: Sequence[int], num_classes: int) -> _Counts:
    counts = Counter(labels)
    per_class = [counts.get(c, 0) for c in range(num_classes)]
    median = float(np.median(per_class))
    ratio = imbalance_ratio(list(labels))
    return _Counts(int(median) if median.is_integer() else median, min(per_class), per_class, ratio)


@dataclass
class _CrossValidation:
    """The shared repeated stratified folds over train + val, and the candidates scored on them."""

    max_images: int
    folds: int
    repeats: int | None
    seed: int
    balanced_score: bool = False
    counts: list[int] | None = None  # labelled images per class the folds were drawn from

    def score(self, features: StageFeatures) -> tuple[list[Candidate], int, int]:
        """Score every candidate; returns them, the images measured and the folds per repeat."""
        labelled = torch.cat([features.splits["train"][0], features.splits["val"][0]])
        labels = torch.cat([features.labels("train"), features.labels("val")]).numpy()
        rows = cv_rows(labels, self.seed, self.max_images)
        if self.repeats is None:
            self.repeats = cv_repeats(len(rows))
        splits = stratified_folds(labels[rows], self.folds, self.repeats, self.seed)
        blocks = list(torch.split(labelled[rows].double(), features.widths, dim=1))
        self.balanced_score = balances_for(labels)[1]
        self.counts = np.bincount(labels[rows]).tolist()
        balance = advised_balance(self.balanced_score)
        candidates = score_candidates(
            blocks, labels[rows], features.names, splits, balance, self.balanced_score
        )
        return candidates, len(rows), len(splits) // max(self.repeats, 1)


def _stage_model(
    backbone: str, weights: str | None, pretrained: bool
) -> tuple[torch.nn.Module, StageFeatures]:
    """The frozen backbone in eval mode and an empty :class:`StageFeatures` naming its stages."""
    model = create_backbone(backbone, weights=weights, pretrained=pretrained).eval()
    if not hasattr(model, "forward_intermediates"):
        raise TlkitError(f"backbone '{backbone}' has no forward_intermediates; pick a timm CNN/ViT")
    info = model.feature_info
    return model, StageFeatures(
        [str(i["module"]) for i in info] + ["top"],
        [int(i["num_chs"]) for i in info] + [int(model.num_features)],
    )


def _report(
    verdict: dict[str, Any],
    candidates: Sequence[Candidate],
    expected: dict[str, float],
    samples_per_class: float,
    num_classes: int,
) -> dict[str, Any]:
    chosen: Candidate = verdict["probe"]
    return {
        "cell": verdict["cell"],
        "recipe": verdict["recipe"],
        "samples_per_class": samples_per_class,
        "num_classes": num_classes,
        "similarity": verdict["similarity"],
        "probe_stage": verdict["probe_stage"],
        "probe": chosen.describe(),
        "expected_accuracy": expected,
        "evidence": {
            "candidates": [c.describe() for c in candidates],
            "chance": round(1.0 / num_classes, 4),
            "size": verdict["size"],
            "reason": verdict["reason"],
            "thresholds": {"small_per_class": SMALL_PER_CLASS, "large_total": LARGE_TOTAL},
            "method": (
                "standardised multinomial logistic regression (L-BFGS, L2 strength chosen on the "
                "folds) on globally average-pooled features of each stage, the top, and the top "
                "joined with the best deep stage; repeated stratified k-fold accuracy over every "
                "labelled image; shallower stages must win by twice the corrected resampled "
                "standard error (Nadeau & Bengio 2003); expected accuracy less the selection "
                "bias (a bootstrap over the folds), 90 % interval from the corrected variance "
                "of the folds, the labelled images' (per class for balanced accuracy) and the "
                "test set's binomial variance"
            ),
        },
    }
