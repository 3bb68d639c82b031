"""Which cell of the transfer-learning matrix a dataset falls in, measured from the data.

Two axes (CS231n transfer-learning notes):

* **size**: labelled training images per class, against :data:`SMALL_PER_CLASS` (and the total
  against :data:`LARGE_TOTAL`, since many classes with few images each still give a backbone
  plenty to adapt to);
* **similarity** to the pretraining data: pooled features of every stage of the frozen
  backbone are fed to cheap cross-validated linear probes. Features become more specific to the
  pretraining task with depth (Yosinski et al. 2014), so when the data resembles that task the
  top features separate its classes best; when an earlier, more generic stage matches or beats
  them, the data is "different" and that stage is the one ``probe_stage`` should read.

The probe is a ridge classifier in closed form (one eigen-decomposition per fold, the ridge
strength picked per fold by generalised cross-validation on the training part only), over
standardised features, scored by repeated stratified k-fold. The gap between the top and the
best earlier stage is tested with the corrected resampled t statistic of Nadeau & Bengio (2003),
which accounts for the overlap of the training sets of k-fold splits.

The pieces are pure functions (:func:`stratified_folds`, :func:`ridge_cv_scores`,
:func:`decide`) around one function that runs the backbone (:func:`measure`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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

__all__ = [
    "LARGE_TOTAL",
    "MIN_GAP",
    "SMALL_PER_CLASS",
    "StageScore",
    "decide",
    "measure",
    "ridge_cv_scores",
    "stage_features",
    "stratified_folds",
]

#: Below this many labelled training images per class (median over classes) the data is
#: "small", unless the total reaches :data:`LARGE_TOTAL`.
SMALL_PER_CLASS = 100
#: From this many labelled training images in all the data is "large" whatever the per-class
#: count (e.g. 1000 classes of 50 images).
LARGE_TOTAL = 10_000
#: The top features must beat every earlier stage by at least this much accuracy (and by twice
#: the standard error of the gap) for the data to count as "similar".
MIN_GAP = 0.01
#: Ridge strengths tried per fold, relative to the largest squared singular value.
_RIDGE_GRID = np.logspace(-6, 0, 13)


@dataclass(frozen=True)
class StageScore:
    """Cross-validated linear-probe accuracy of one stage's pooled features.

    Attributes:
        name: Module name of the stage (``blocks.2``) or ``top`` for the final pooled features.
        index: Index into the backbone's ``feature_info`` (what ``probe_stage`` takes), ``None``
            for the top features (what ``linear_probe`` reads).
        channels: Feature width.
        folds: Accuracy on each held-out fold, in the same fold order for every stage.
    """

    name: str
    index: int | None
    channels: int
    folds: tuple[float, ...]

    @property
    def mean(self) -> float:
        """Mean accuracy over folds."""
        return float(np.mean(self.folds))

    @property
    def std(self) -> float:
        """Standard deviation of the accuracy over folds."""
        return float(np.std(self.folds, ddof=1)) if len(self.folds) > 1 else 0.0


# --- cross-validated ridge probes (pure) -------------------------------------------------------
def stratified_folds(
    labels: Sequence[int], folds: int = 5, repeats: int = 3, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated stratified k-fold splits.

    Args:
        labels: Class of each sample.
        folds: Folds per repeat (lowered to the smallest class count).
        repeats: Independent shuffles.
        seed: Seed of the shuffles.

    Returns:
        ``(train_indices, test_indices)`` pairs, ``folds * repeats`` of them.

    Raises:
        TlkitError: If a class has fewer than two samples.
    """
    y = np.asarray(labels)
    counts = Counter(y.tolist())
    if not counts or min(counts.values()) < 2:
        raise TlkitError(
            "need at least 2 labelled images in every class to measure similarity; "
            "add images or raise --max-per-class"
        )
    k = max(2, min(folds, min(counts.values())))
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(repeats):
        assignment = np.empty(len(y), dtype=np.int64)
        for label in sorted(counts):
            members = rng.permutation(np.flatnonzero(y == label))
            assignment[members] = (np.arange(len(members)) + rng.integers(k)) % k
        for fold in range(k):
            splits.append((np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)))
    return splits


def _ridge_fit_predict(
    x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, classes: int
) -> torch.Tensor:
    """Fit a ridge classifier on ``x`` (strength by GCV) and predict the classes of ``x_test``.

    Works on the eigen-decomposition of the smaller Gram matrix (``x x^T`` when there are fewer
    samples than features, else ``x^T x``), so wide features cost no more than narrow ones.
    """
    mean, std = x.mean(0), x.std(0, unbiased=False)
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    x, x_test = (x - mean) / std, (x_test - mean) / std
    targets = torch.nn.functional.one_hot(y, classes).double()
    offset = targets.mean(0)
    targets = targets - offset
    n, d = x.shape
    if n <= d:
        evals, basis = torch.linalg.eigh(x @ x.T)
        keep = evals > evals.max().clamp_min(1e-12) * 1e-10
        s2, basis = evals[keep], basis[:, keep]
        projected = basis.T @ targets  # U^T Y
        numerator = projected  # W = X^T U diag(1/(s^2+lam)) U^T Y
        test_basis = x_test @ x.T @ basis
    else:
        evals, basis = torch.linalg.eigh(x.T @ x)
        keep = evals > evals.max().clamp_min(1e-12) * 1e-10
        s2, basis = evals[keep], basis[:, keep]
        numerator = basis.T @ (x.T @ targets)  # S U^T Y; W = V diag(1/(s^2+lam)) S U^T Y
        projected = numerator / s2.sqrt()[:, None]
        test_basis = x_test @ basis
    outside = float((targets**2).sum() - (projected**2).sum())
    best: tuple[float, float] | None = None
    for lam in _RIDGE_GRID * max(float(s2.max()), 1e-12):
        shrink = s2 / (s2 + lam)
        residual = max(outside, 0.0) + float((((1 - shrink)[:, None] * projected) ** 2).sum())
        dof = n - float(shrink.sum())
        gcv = n * residual / max(dof, 1e-9) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, float(lam))
    lam = best[1] if best is not None else 1.0
    scores = test_basis @ (numerator / (s2 + lam)[:, None]) + offset
    return scores.argmax(1)


def ridge_cv_scores(
    features: np.ndarray | torch.Tensor,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[float, ...]:
    """Held-out accuracy of a ridge classifier on standardised features, per split.

    Standardisation and the ridge strength (generalised cross-validation over a fixed grid)
    are fitted on each training part only, so nothing leaks from the held-out part.

    Args:
        features: ``(N, D)`` features.
        labels: ``N`` class indices.
        splits: ``(train_indices, test_indices)`` pairs, e.g. from :func:`stratified_folds`.

    Returns:
        Accuracy on each split's test part.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    classes = int(y.max()) + 1
    scores = []
    for train, test in splits:
        train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
        predicted = _ridge_fit_predict(x[train_t], y[train_t], x[test_t], classes)
        scores.append(float((predicted == y[test_t]).double().mean()))
    return tuple(scores)


# --- the decision (pure) ---------------------------------------------------------------------
def decide(
    scores: Sequence[StageScore],
    samples_per_class: float,
    num_classes: int,
    num_train: int | None = None,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """The matrix cell from per-stage probe scores and the amount of labelled data.

    Args:
        scores: Earlier stages shallow to deep, then the top features last; every entry scored
            on the same folds.
        samples_per_class: Median labelled training images per class.
        num_classes: Number of classes.
        num_train: Labelled training images in all (default ``samples_per_class *
            num_classes``).
        test_fraction: Share of the samples in each held-out fold (``1/k`` for k folds), for
            the corrected standard error of the gap.

    Returns:
        ``size`` (small|large), ``similarity`` (similar|different), ``cell``, ``recipe`` (the
        shipped recipe of the cell), ``probe_stage`` (feature index of the best earlier stage,
        what ``probe_stage`` should read), ``gap`` (top minus best earlier stage, mean over
        folds), ``noise`` (twice the corrected standard error of the gap) and ``reason``.

    Raises:
        TlkitError: With fewer than two stages to compare.
        ValueError: If the stages were scored on different numbers of folds.
    """
    if len(scores) < 2:
        raise TlkitError("need the top features and at least one earlier stage to compare")
    if len({len(s.folds) for s in scores}) != 1:
        raise ValueError("every stage must be scored on the same folds")
    total = num_train if num_train is not None else round(samples_per_class * num_classes)
    small = samples_per_class < SMALL_PER_CLASS and total < LARGE_TOTAL
    size = "small" if small else "large"

    top, earlier = scores[-1], list(scores[:-1])
    best = max(reversed(earlier), key=lambda s: s.mean)  # ties go to the deeper stage
    diffs = np.asarray(top.folds) - np.asarray(best.folds)
    gap = float(diffs.mean())
    if len(diffs) > 1:
        ratio = test_fraction / max(1.0 - test_fraction, 1e-9)
        se = math.sqrt((1.0 / len(diffs) + ratio) * float(np.var(diffs, ddof=1)))
    else:
        se = 0.0
    noise = 2.0 * se
    similar = gap > max(MIN_GAP, noise)
    similarity = "similar" if similar else "different"

    if small:
        why_size = f"under {SMALL_PER_CLASS} per class and under {LARGE_TOTAL} in all"
    elif samples_per_class >= SMALL_PER_CLASS:
        why_size = f"at least {SMALL_PER_CLASS} per class"
    else:
        why_size = f"at least {LARGE_TOTAL} in all"
    size_reason = f"{samples_per_class:g} labelled images per class, {total} in all ({why_size})"
    versus = (
        f"top features {top.mean:.3f} ± {top.std:.3f} vs best earlier stage {best.name} "
        f"{best.mean:.3f} ± {best.std:.3f} (gap {gap:+.3f}, noise {noise:.3f})"
    )
    if similar:
        sim_reason = f"{versus}: the top features are best, so the data resembles the pretraining"
    else:
        sim_reason = (
            f"{versus}: an earlier stage matches or beats the top, so the data differs from the "
            "pretraining"
        )
        if small:
            sim_reason += f"; probe_stage should read stage {best.index} ({best.name})"
    cell = f"{size}-{similarity}"
    return {
        "size": size,
        "similarity": similarity,
        "cell": cell,
        "recipe": cell,
        "probe_stage": best.index,
        "gap": round(gap, 4),
        "noise": round(noise, 4),
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


def _subsample(labels: Sequence[int], per_class: int, seed: int) -> np.ndarray:
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def _score_stages(
    features: torch.Tensor,
    labels: np.ndarray,
    names: list[str],
    widths: list[int],
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> list[StageScore]:
    """Probe scores of the earlier stages, then of the top features (the last column block).

    The last feature stage is the top of the network, so the final features stand for it.
    """
    scores, start = [], 0
    last_stage, top = len(names) - 2, len(names) - 1
    for index, (name, width) in enumerate(zip(names, widths, strict=True)):
        block = features[:, start : start + width]
        start += width
        if index == last_stage:
            continue
        accuracy = ridge_cv_scores(block, labels, splits)
        scores.append(StageScore(name, None if index == top else index, width, accuracy))
    return scores


def measure(
    data: str,
    backbone: str | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    shots: int | None = None,
    max_per_class: int = 50,
    max_images: int = 1000,
    folds: int = 5,
    repeats: int = 3,
    seed: int = 42,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Measure a dataset's size and similarity and pick its cell of the matrix.

    Args:
        data: Anything :class:`~tlkit.data.TransferDataModule` accepts (``demo``, a folder...).
        backbone: timm model name (default :data:`~tlkit.backbones.DEFAULT_BACKBONE`), with its
            pretrained weights.
        image_size: Input size for the measurement (default: the backbone's).
        weights: Backbone weight file (default: the bundled or timm pretrained weights).
        shots: Training images per class that will be used (``--shots`` of ``finetune``);
            ``None`` counts the whole training split.
        max_per_class: Images per class fed to the probes.
        max_images: Cap on all images fed to the probes (lowers the per-class count).
        folds: Folds of the stratified cross-validation.
        repeats: Repeats of the cross-validation (with different shuffles).
        seed: Seed of the splits, the subsample and the folds.
        batch_size: Inference batch size.
        cache_dir: Feature cache (default ``$TLKIT_CACHE_DIR``); the features of a dataset are
            computed once per backbone and size.

    Returns:
        The report: ``cell``, ``recipe``, ``samples_per_class``, ``num_classes``,
        ``similarity``, ``probe_stage`` and ``evidence`` (per-stage accuracies with their
        spread, the gap and noise, thresholds, method, the reason).
    """
    for name, value in (("max_per_class", max_per_class), ("max_images", max_images)):
        if value < 2:
            raise TlkitError(f"--{name.replace('_', '-')} must be at least 2, got {value}")
    backbone = backbone or DEFAULT_BACKBONE
    dm = TransferDataModule(
        data=data, backbone=backbone, image_size=image_size, shots=shots, seed=seed
    )
    source = dm.source
    train_counts = Counter(source.train.labels)
    num_classes = len(source.classes)
    if num_classes < 2:
        raise TlkitError(f"need at least 2 classes to advise, found {num_classes} in {data}")
    median = float(np.median([train_counts.get(c, 0) for c in range(num_classes)]))
    samples_per_class: float | int = int(median) if median.is_integer() else median

    pool = Split(
        list(source.train.items) + list(source.val.items),
        list(source.train.labels) + list(source.val.labels),
    )
    per_class = max(2, min(max_per_class, max_images // num_classes))
    picked = pool.subset(_subsample(pool.labels, per_class, seed).tolist())
    picked = dm.drop_undecodable("the measured images", picked)

    model = create_backbone(backbone, weights=weights).eval()
    if not hasattr(model, "forward_intermediates"):
        raise TlkitError(f"backbone '{backbone}' has no forward_intermediates; pick a timm CNN/ViT")
    info = model.feature_info
    widths = [int(i["num_chs"]) for i in info] + [int(model.num_features)]
    names = [str(i["module"]) for i in info] + ["top"]

    def extract(images: torch.Tensor) -> torch.Tensor:
        return torch.cat(stage_features(model, images), dim=1)

    extractor = FeatureExtractor(extract, f"advise:{backbone}:{tensor_digest(model)}")
    dataset = ImageDataset(picked, build_pipeline(eval_transform(dm.spec)))
    identity = {
        "data": DataSource(classes=source.classes, train=picked).fingerprint(),
        "transform": dm.spec.describe(),
        "stages": widths,
    }
    store = Path(cache_dir) / "features" if cache_dir is not None else default_cache_dir()
    features = cached_features(
        extractor, dataset, identity, store, batch_size=batch_size, description="stage features"
    )
    labels = features.tensors[1].numpy()
    splits = stratified_folds(labels, folds, repeats, seed)
    scores = _score_stages(features.tensors[0].double(), labels, names, widths, splits)
    k = len(splits) // max(repeats, 1)
    verdict = decide(scores, samples_per_class, num_classes, len(source.train), 1.0 / k)
    evidence = {
        "stages": [
            {
                "name": s.name,
                "index": s.index,
                "channels": s.channels,
                "accuracy": round(s.mean, 4),
                "std": round(s.std, 4),
            }
            for s in scores
        ],
        "chance": round(1.0 / num_classes, 4),
        "gap": verdict["gap"],
        "noise": verdict["noise"],
        "size": verdict["size"],
        "reason": verdict["reason"],
        "num_train": len(source.train),
        "min_per_class": min(train_counts.get(c, 0) for c in range(num_classes)),
        "images_measured": len(labels),
        "image_size": dm.spec.size,
        "backbone": backbone,
        "folds": k,
        "repeats": repeats,
        "thresholds": {
            "small_per_class": SMALL_PER_CLASS,
            "large_total": LARGE_TOTAL,
            "min_gap": MIN_GAP,
        },
        "method": (
            "ridge classifier (closed form, GCV-chosen strength) on standardised, globally "
            "average-pooled features of each stage; repeated stratified k-fold accuracy; gap "
            "tested with the corrected resampled t statistic (Nadeau & Bengio 2003)"
        ),
    }
    return {
        "cell": verdict["cell"],
        "recipe": verdict["recipe"],
        "samples_per_class": samples_per_class,
        "num_classes": num_classes,
        "similarity": verdict["similarity"],
        "probe_stage": verdict["probe_stage"],
        "evidence": evidence,
    }
