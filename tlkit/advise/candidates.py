"""Candidate feature sets scored by the exact probe, the choice among them and the matrix rule.

Pure functions of the scores: no backbone runs here (see :mod:`tlkit.advise.measure`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tlkit.balance import NO_BALANCE, Balance
from tlkit.errors import TlkitError
from tlkit.probe import CVPath, cv_path
from tlkit.recipes import cell_recipe

__all__ = [
    "INTERVAL_Z",
    "LARGE_TOTAL",
    "SMALL_PER_CLASS",
    "Candidate",
    "choose",
    "decide",
    "expected_accuracy",
    "feature_stages",
    "score_candidates",
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
            "metric": self.path.metric,
            "balance": self.path.balance.name,
            "scale": self.path.scale,
        }


def feature_stages(stage: int | list[int | str] | None) -> tuple[int | None, ...]:
    """The feature indices (``None``: the top) of a ``probe_stage`` ``stage`` setting, or of
    a report's ``probe_stage`` (``None``: the top features alone); the inverse of
    :attr:`Candidate.strategy_stage`."""
    if stage is None:
        return (None,)
    return tuple(None if s == "top" else s for s in (stage if isinstance(stage, list) else [stage]))


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
    balance: Balance = NO_BALANCE,
    balanced_score: bool = False,
) -> list[Candidate]:
    """Score every stage, the top features and top + the best deep earlier stage.

    Args:
        blocks: Pooled features of each feature stage (shallow to deep), then of the top.
        labels: Class of each row.
        names: Names of ``blocks`` (the last one is ``top``).
        splits: The shared folds.
        balance: How every probe treats unequal classes.
        balanced_score: Score on balanced accuracy (imbalanced classes).

    Returns:
        Candidates: the top, the concatenation, the stages deep to shallow.
    """
    last = len(blocks) - 1

    def path(features: torch.Tensor) -> CVPath:
        # per-feature scaling for every candidate: stages and joins compete on equal terms; the
        # exact fit on the chosen features then picks its own scaling (tlkit.probe.scales_for)
        return cv_path(features, labels, splits, balance=balance, balanced_score=balanced_score)

    stages = [
        Candidate(names[i], (i,), int(b.shape[1]), path(b), deep=i >= last - 2)
        for i, b in enumerate(blocks[:-1])
    ]
    top = Candidate("top", (None,), int(blocks[-1].shape[1]), path(blocks[-1]))
    partner = max(reversed([c for c in stages if c.deep]), key=lambda c: c.mean)
    index = partner.stages[0]
    joined = torch.cat([blocks[-1], blocks[index]], dim=1)
    both = Candidate(f"top+{partner.name}", (None, index), int(joined.shape[1]), path(joined))
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
    counts: Sequence[int] | None = None,
) -> dict[str, float]:
    """Expected accuracy of ``chosen`` refitted on every labelled image, with an interval.

    The cross-validated accuracy of the best of many configurations (every candidate at every
    L2 strength) is optimistic: the bias is estimated by :func:`_selection_bias`. The variance
    of a k-fold mean is larger than the binomial variance of ``labelled`` images, since the
    folds' training sets overlap: it is
    the corrected resampled variance of Nadeau & Bengio (2003), ``(1/J + n_test/n_train)`` times
    the variance of the ``J`` fold accuracies, or the binomial one when that is larger; a test set
    of ``tested`` images adds its own binomial variance. Binomial variances are those of the
    Jeffreys posterior of the accuracy (never 0, even at 100 %). A balanced accuracy is a mean of
    per-class recalls, each measured on that class's images alone: its binomial variance is
    ``sum_c var_c / C**2`` over the ``C`` classes, ``var_c`` the variance of the Jeffreys
    posterior of a recall near the estimate measured on ``counts[c]`` images, so that classes of
    a few images widen the interval as they should.

    Args:
        candidates: Every candidate the choice was made among (on the same folds).
        chosen: The chosen one.
        labelled: Labelled images the folds were drawn from.
        tested: Size of the test set the accuracy will be measured on, if known.
        test_fraction: Share of the samples in each held-out fold (``1/k``).
        counts: Labelled images per class (for a balanced accuracy's binomial variance).

    Returns:
        ``estimate``, ``low``, ``high`` (a 90 % interval) and ``bias``, as fractions, and
        ``metric``: ``accuracy``, or ``balanced_accuracy`` (the accuracy on a test set with
        equal classes) when the candidates were scored on it.
    """
    rows = np.concatenate([c.path.accuracy for c in candidates], axis=0)
    bias = _selection_bias(rows, chosen.folds)
    estimate = min(max(chosen.mean - bias, 0.0), 1.0)
    corrected = _corrected_variance(chosen.folds, test_fraction)
    balanced = chosen.path.metric == "balanced_accuracy" and counts
    binomial = _recall_variance(estimate, counts if balanced else [max(labelled, 1)])
    tests = _recall_variance(estimate, [tested]) if tested else 0.0
    variance = max(corrected, binomial) + tests
    half = INTERVAL_Z * math.sqrt(variance)
    return {
        "estimate": round(estimate, 4),
        "low": round(max(estimate - half, 0.0), 4),
        "high": round(min(estimate + half, 1.0), 4),
        "bias": round(bias, 4),
        "metric": chosen.path.metric,
    }


#: How the optimism of choosing the best of many configurations on the same folds is estimated:
#: ``bootstrap`` (over the folds, :func:`_selection_bias`) or ``per-fold`` (Tibshirani &
#: Tibshirani 2009). bench/interval.py compares them.
SELECTION_BIAS = "bootstrap"
#: Bootstrap resamples of the folds for :func:`_selection_bias`.
BOOTSTRAP_DRAWS = 1000


def _selection_bias(rows: np.ndarray, chosen: np.ndarray) -> float:
    """How much the chosen configuration's cross-validated mean overstates what choosing the
    best of ``rows`` (``(configurations, folds)`` held-out scores) delivers.

    ``bootstrap``: the folds are resampled with replacement; the configuration with the best
    mean on the resampled folds is scored on the folds left out, and the bias is the chosen
    mean less the average of those scores (bootstrap bias-corrected cross-validation,
    Tsamardinos et al. 2018, resampling folds instead of images). ``per-fold``: the mean over
    folds of how much each fold's best beat the chosen configuration there, which counts
    every fold's luck among many configurations on a few images as optimism.
    """
    if rows.shape[0] < 2:
        return 0.0
    if SELECTION_BIAS == "per-fold" or rows.shape[1] < 3:
        return float((rows.max(axis=0) - chosen).mean())
    folds = rows.shape[1]
    picks = np.random.default_rng(0).integers(0, folds, size=(BOOTSTRAP_DRAWS, folds))
    inbag = np.zeros((BOOTSTRAP_DRAWS, folds))
    np.add.at(inbag, (np.arange(BOOTSTRAP_DRAWS)[:, None], picks), 1.0)
    out = inbag == 0
    keep = out.any(axis=1)
    best = np.argmax((inbag @ rows.T).round(9), axis=1)  # the first of equals, as the choice
    scored = (rows[best] * out).sum(axis=1)[keep] / out.sum(axis=1)[keep]
    return max(float(chosen.mean() - scored.mean()), 0.0)


def _recall_variance(recall: float, counts: Sequence[int]) -> float:
    """Variance of a mean of per-class recalls near ``recall``, each on ``counts[c]`` images
    (the Jeffreys posterior ``Beta(k + 1/2, n - k + 1/2)`` of ``k = recall * n`` hits)."""
    total = 0.0
    present = [n for n in counts if n > 0]
    for n in present:
        a, b = recall * n + 0.5, (1.0 - recall) * n + 0.5
        total += a * b / ((a + b) ** 2 * (a + b + 1.0))
    return total / max(len(present), 1) ** 2


def _size(samples_per_class: float, total: int, held_out_val: int) -> tuple[str, str]:
    """``small`` or ``large``, and why, from the images that train."""
    if samples_per_class < SMALL_PER_CLASS and total < LARGE_TOTAL:
        size, why = "small", f"under {SMALL_PER_CLASS} per class and under {LARGE_TOTAL} in all"
    elif samples_per_class >= SMALL_PER_CLASS:
        size, why = "large", f"at least {SMALL_PER_CLASS} per class"
    else:
        size, why = "large", f"at least {LARGE_TOTAL} in all"
    if held_out_val:
        why += f"; {held_out_val} more were held out for validation: the data has no val split"
    return size, f"{samples_per_class:g} labelled images per class, {total} in all ({why})"


def decide(
    candidates: Sequence[Candidate],
    samples_per_class: float,
    num_classes: int,
    num_train: int | None = None,
    test_fraction: float = 0.2,
    held_out_val: int = 0,
) -> dict[str, Any]:
    """The matrix cell and the frozen probe from scored candidates and the amount of data.

    Args:
        candidates: From :func:`score_candidates`, scored on the same folds.
        samples_per_class: Median labelled training images per class.
        num_classes: Number of classes.
        num_train: Labelled training images in all (default ``samples_per_class *
            num_classes``).
        test_fraction: Share of the samples in each held-out fold (``1/k`` for k folds).
        held_out_val: Images the validation split took from train, when the data has none
            of its own (the reason says so: the size is what trains).

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
    size, size_reason = _size(samples_per_class, total, held_out_val)
    chosen, why = choose(candidates, test_fraction)
    similar = chosen.stages == (None,)
    similarity = "similar" if similar else "different"
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
        "recipe": cell_recipe(size, similarity),
        "probe": chosen,
        "probe_stage": chosen.strategy_stage,
        "reason": f"{size_reason}: {size}; {sim_reason}.",
    }
