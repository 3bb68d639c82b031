"""Which cell of the transfer-learning matrix a dataset falls in, and which frozen probe to fit.

One measurement serves advice and training alike:

* **size**: labelled training images per class, against :data:`SMALL_PER_CLASS` (and the total
  against :data:`LARGE_TOTAL`, since many classes with few images each still give a backbone
  plenty to adapt to);
* **candidates**: the pooled features of every stage of the frozen backbone, the final pooled
  features (``top``) and the concatenation of ``top`` with the best deep earlier stage (a
  multi-stage probe, cf. Head2Toe, Evci et al. 2022) are each scored by the exact probe of
  :mod:`tlkit.probe` (standardised multinomial logistic regression, L2 strength chosen on the
  folds) on the *same* repeated stratified folds over every labelled image;
* **the choice**: the best candidate among the deep ones (``top``, the concatenation and the
  two deepest stages); a shallower stage replaces it only when it wins by more than the noise
  (twice the corrected resampled standard error of the paired fold differences, Nadeau &
  Bengio 2003): with a few dozen images the best of many candidates is partly luck;
* **similarity** follows: the data resembles the pretraining data when the top features alone
  are chosen; otherwise an earlier stage carries what the classes need;
* **the expected accuracy** of the chosen probe with an interval: the cross-validated accuracy
  less the selection bias of picking the best of many configurations (Tibshirani & Tibshirani
  2009), +- 1.645 standard errors (of the k-fold mean, corrected for overlapping folds, and of
  the test set).

The features are returned with the report, so ``--recipe auto`` fits the winner from them with
no second pass over the images.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlkit.backbones import DEFAULT_BACKBONE, create_backbone
from tlkit.data.datamodule import TransferDataModule
from tlkit.data.datasets import ImageDataset
from tlkit.data.features import (
    FeatureExtractor,
    cached_features,
    default_cache_dir,
    tensor_digest,
)
from tlkit.data.sources import DataSource, Split
from tlkit.data.transforms import build_pipeline, eval_transform
from tlkit.errors import TlkitError
from tlkit.probe import CVPath, cv_path, cv_repeats, cv_rows, stratified_folds

__all__ = [
    "INTERVAL_Z",
    "LARGE_TOTAL",
    "SMALL_PER_CLASS",
    "Candidate",
    "StageFeatures",
    "choose",
    "decide",
    "expected_accuracy",
    "feature_stages",
    "measure",
    "score_candidates",
    "stage_features",
    "stratified_folds",
]

#: Below this many labelled training images per class (median over classes) the data is
#: "small", unless the total reaches :data:`LARGE_TOTAL`.
SMALL_PER_CLASS = 100
#: From this many labelled training images in all the data is "large" whatever the per-class
#: count (e.g. 1000 classes of 50 images).
LARGE_TOTAL = 10_000
#: Half-width of the expected-accuracy interval in standard errors (a 90 % interval).
INTERVAL_Z = 1.645


@dataclass(frozen=True)
class Candidate:
    """One set of frozen features, scored by the exact probe on the shared folds.

    Attributes:
        name: ``top``, a stage's module name (``blocks.4``) or ``top+blocks.4``.
        stages: What ``probe_stage`` reads: feature indices, ``None`` for the top features.
        channels: Feature width.
        path: Held-out accuracy of every L2 strength on every fold.
        deep: One of the deep candidates, chosen on its mean alone.
    """

    name: str
    stages: tuple[int | None, ...]
    channels: int
    path: CVPath
    deep: bool = True

    @property
    def folds(self) -> np.ndarray:
        """Held-out accuracy per fold at the chosen L2 strength."""
        return self.path.folds()

    @property
    def mean(self) -> float:
        """Cross-validated accuracy at the chosen L2 strength."""
        return float(self.folds.mean())

    @property
    def std(self) -> float:
        """Standard deviation of the accuracy over folds."""
        return float(np.std(self.folds, ddof=1)) if len(self.folds) > 1 else 0.0

    @property
    def l2(self) -> float:
        """The L2 strength chosen on the folds."""
        return self.path.l2[self.path.best]

    @property
    def strategy_stage(self) -> int | list[int | str] | None:
        """``probe_stage``'s ``stage`` setting for these features (``None``: the top alone)."""
        if self.stages == (None,):
            return None
        if len(self.stages) == 1:
            return self.stages[0]
        return ["top" if s is None else s for s in self.stages]

    def describe(self) -> dict[str, Any]:
        """Plain data for reports."""
        return {
            "name": self.name,
            "stage": self.strategy_stage,
            "channels": self.channels,
            "accuracy": round(self.mean, 4),
            "std": round(self.std, 4),
            "l2": self.l2,
            "deep": self.deep,
        }


def feature_stages(stage: int | list[int | str] | None) -> tuple[int | None, ...]:
    """The feature indices (``None``: the top) of a ``probe_stage`` ``stage`` setting, or of
    a report's ``probe_stage`` (``None``: the top features alone); the inverse of
    :attr:`Candidate.strategy_stage`."""
    if stage is None:
        return (None,)
    return tuple(None if s == "top" else s for s in (stage if isinstance(stage, list) else [stage]))


# --- the candidates and the choice (pure) ------------------------------------------------------
def _corrected_variance(folds: np.ndarray, test_fraction: float) -> float:
    """Variance of the mean of per-fold scores, corrected for overlapping training sets
    (Nadeau & Bengio 2003): ``(1/J + n_test/n_train)`` times the variance of the ``J`` scores."""
    if len(folds) < 2:
        return 0.0
    ratio = test_fraction / max(1.0 - test_fraction, 1e-9)
    return (1.0 / len(folds) + ratio) * float(np.var(folds, ddof=1))


def _noise(a: Candidate, b: Candidate, test_fraction: float) -> float:
    """Twice the corrected resampled standard error of ``a - b`` over the shared folds."""
    return 2.0 * math.sqrt(_corrected_variance(a.folds - b.folds, test_fraction))


def score_candidates(
    blocks: Sequence[torch.Tensor],
    labels: np.ndarray,
    names: Sequence[str],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
) -> list[Candidate]:
    """Score every stage, the top features and top + the best deep earlier stage.

    Args:
        blocks: Pooled features of each feature stage (shallow to deep), then of the top.
        labels: Class of each row.
        names: Names of ``blocks`` (the last one is ``top``).
        splits: The shared folds.

    Returns:
        Candidates: the top, the concatenation, the stages deep to shallow.
    """
    last = len(blocks) - 1
    stages = [
        Candidate(names[i], (i,), int(b.shape[1]), cv_path(b, labels, splits), deep=i >= last - 2)
        for i, b in enumerate(blocks[:-1])
    ]
    top = Candidate("top", (None,), int(blocks[-1].shape[1]), cv_path(blocks[-1], labels, splits))
    partner = max(reversed([c for c in stages if c.deep]), key=lambda c: c.mean)
    index = partner.stages[0]
    joined = torch.cat([blocks[-1], blocks[index]], dim=1)
    both = Candidate(
        f"top+{partner.name}", (None, index), int(joined.shape[1]), cv_path(joined, labels, splits)
    )
    return [top, both, *reversed(stages)]


def choose(candidates: Sequence[Candidate], test_fraction: float) -> tuple[Candidate, str]:
    """The best deep candidate, unless a shallower one beats it by more than the noise.

    Ties go to the earlier candidate in ``candidates`` (the top features first).

    Returns:
        The chosen candidate and why, in words.
    """
    deep = [c for c in candidates if c.deep]
    best = max(deep, key=lambda c: round(c.mean, 9))  # max keeps the first of equals
    why = f"{best.name} scores best among the deep features ({best.mean:.3f} ± {best.std:.3f})"
    for other in sorted((c for c in candidates if not c.deep), key=lambda c: -c.mean):
        noise = _noise(other, best, test_fraction)
        if other.mean - best.mean > noise:
            why = (
                f"{other.name} beats the best deep features ({best.name}) by "
                f"{other.mean - best.mean:+.3f}, more than the noise {noise:.3f}"
            )
            return other, why
    return best, why


def expected_accuracy(
    candidates: Sequence[Candidate],
    chosen: Candidate,
    labelled: int,
    tested: int | None = None,
    test_fraction: float = 0.2,
) -> dict[str, float]:
    """Expected accuracy of ``chosen`` refitted on every labelled image, with an interval.

    The cross-validated accuracy of the best of many configurations is optimistic: the bias is
    estimated as the mean, over folds, of how much the best configuration on each fold beat the
    chosen one there (Tibshirani & Tibshirani 2009). The variance of a k-fold mean is larger than
    the binomial variance of ``labelled`` images, since the folds' training sets overlap: it is
    the corrected resampled variance of Nadeau & Bengio (2003), ``(1/J + n_test/n_train)`` times
    the variance of the ``J`` fold accuracies, or the binomial one when that is larger; a test set
    of ``tested`` images adds its own binomial variance.

    Args:
        candidates: Every candidate the choice was made among (on the same folds).
        chosen: The chosen one.
        labelled: Labelled images the folds were drawn from.
        tested: Size of the test set the accuracy will be measured on, if known.
        test_fraction: Share of the samples in each held-out fold (``1/k``).

    Returns:
        ``estimate``, ``low``, ``high`` (a 90 % interval) and ``bias``, as fractions.
    """
    rows = np.concatenate([c.path.accuracy for c in candidates], axis=0)
    bias = float((rows.max(axis=0) - chosen.folds).mean())
    estimate = min(max(chosen.mean - bias, 0.0), 1.0)
    spread = estimate * (1.0 - estimate)
    corrected = _corrected_variance(chosen.folds, test_fraction)
    variance = max(corrected, spread / max(labelled, 1)) + (spread / tested if tested else 0.0)
    half = INTERVAL_Z * math.sqrt(variance)
    return {
        "estimate": round(estimate, 4),
        "low": round(max(estimate - half, 0.0), 4),
        "high": round(min(estimate + half, 1.0), 4),
        "bias": round(bias, 4),
    }


def decide(
    candidates: Sequence[Candidate],
    samples_per_class: float,
    num_classes: int,
    num_train: int | None = None,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """The matrix cell and the frozen probe from scored candidates and the amount of data.

    Args:
        candidates: From :func:`score_candidates`, scored on the same folds.
        samples_per_class: Median labelled training images per class.
        num_classes: Number of classes.
        num_train: Labelled training images in all (default ``samples_per_class *
            num_classes``).
        test_fraction: Share of the samples in each held-out fold (``1/k`` for k folds).

    Returns:
        ``size``, ``similarity``, ``cell``, ``recipe`` (the shipped recipe of the cell),
        ``probe`` (the chosen candidate), ``probe_stage`` (``probe_stage``'s ``stage`` for it,
        ``None`` for the top features) and ``reason``.

    Raises:
        TlkitError: With no candidate.
    """
    if not candidates:
        raise TlkitError("need at least one candidate feature set to compare")
    total = num_train if num_train is not None else round(samples_per_class * num_classes)
    small = samples_per_class < SMALL_PER_CLASS and total < LARGE_TOTAL
    size = "small" if small else "large"
    chosen, why = choose(candidates, test_fraction)
    similar = chosen.stages == (None,)
    similarity = "similar" if similar else "different"
    if small:
        why_size = f"under {SMALL_PER_CLASS} per class and under {LARGE_TOTAL} in all"
    elif samples_per_class >= SMALL_PER_CLASS:
        why_size = f"at least {SMALL_PER_CLASS} per class"
    else:
        why_size = f"at least {LARGE_TOTAL} in all"
    size_reason = f"{samples_per_class:g} labelled images per class, {total} in all ({why_size})"
    if similar:
        sim_reason = f"{why}: the top features suffice, so the data resembles the pretraining"
    else:
        sim_reason = (
            f"{why}: earlier stages carry what the classes need, so the data differs from the "
            f"pretraining; the probe reads {chosen.name}"
        )
    cell = f"{size}-{similarity}"
    return {
        "size": size,
        "similarity": similarity,
        "cell": cell,
        "recipe": cell,
        "probe": chosen,
        "probe_stage": chosen.strategy_stage,
        "reason": f"{size_reason}: {size}; {sim_reason}.",
    }


# --- measurement (runs the backbone) ---------------------------------------------------------
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

    def extract(images: torch.Tensor) -> torch.Tensor:
        return torch.cat(stage_features(model, images), dim=1)

    extractor = FeatureExtractor(extract, f"advise:{backbone}:{tensor_digest(model)}")
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
        raise TlkitError(f"--max-images must be at least 2, got {max_images}")
    backbone = backbone or DEFAULT_BACKBONE
    dm = datamodule or TransferDataModule(
        data=data, backbone=backbone, image_size=image_size, shots=shots, seed=seed
    )
    source = dm.source
    num_classes = len(source.classes)
    if num_classes < 2:
        raise TlkitError(f"need at least 2 classes to advise, found {num_classes} in {data}")
    decodable = dm.check_images()
    train_counts = Counter(decodable["train"].labels)
    median = float(np.median([train_counts.get(c, 0) for c in range(num_classes)]))
    samples_per_class: float | int = int(median) if median.is_integer() else median
    model, features = _stage_model(backbone, weights, pretrained)
    wanted = ("train", "val", "test") if with_test else ("train", "val")
    features.splits = _extract(
        model, backbone, dm, {k: decodable[k] for k in wanted}, features.widths, cache_dir,
        batch_size,
    )  # fmt: skip
    labelled = torch.cat([features.splits["train"][0], features.splits["val"][0]])
    labels = torch.cat([features.labels("train"), features.labels("val")]).numpy()
    rows = cv_rows(labels, seed, max_images)
    repeats = repeats if repeats is not None else cv_repeats(len(rows))
    splits = stratified_folds(labels[rows], folds, repeats, seed)
    blocks = list(torch.split(labelled[rows].double(), features.widths, dim=1))
    candidates = score_candidates(blocks, labels[rows], features.names, splits)
    k = len(splits) // max(repeats, 1)
    verdict = decide(candidates, samples_per_class, num_classes, len(decodable["train"]), 1.0 / k)
    tested = len(decodable["test"]) if with_test else None
    expected = expected_accuracy(candidates, verdict["probe"], len(rows), tested, 1.0 / k)
    report = _report(verdict, candidates, expected, samples_per_class, num_classes)
    report["evidence"].update(
        num_train=len(decodable["train"]),
        num_val=len(decodable["val"]),
        min_per_class=min(train_counts.get(c, 0) for c in range(num_classes)),
        images_measured=len(rows),
        image_size=dm.spec.size,
        backbone=backbone,
        folds=k,
        repeats=repeats,
    )
    return report, features


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
                "bias (Tibshirani & Tibshirani 2009), 90 % interval from the corrected variance "
                "of the folds and the test set's binomial variance"
            ),
        },
    }
