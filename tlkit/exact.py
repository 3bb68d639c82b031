"""Fit a frozen-backbone TransferModule's head exactly, from features, and measure it.

The frozen cells (``solver: auto`` in the small recipes) need no epochs: the head is the exact
probe of :mod:`tlkit.probe`, its L2 strength chosen by repeated stratified k-fold over every
labelled image (train and val together), then refitted on all of them. The validation split,
when there is one, is still scored, by the same probe fitted on the training split alone.

The features come from the caller: the run's feature cache (one pass over each split), or the
features ``tlkit advise`` already measured for ``--recipe auto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tlkit.advise import Candidate, expected_accuracy
from tlkit.errors import TlkitError
from tlkit.probe import (
    Probe,
    cv_path,
    cv_repeats,
    cv_rows,
    fit_probe,
    rescale_l2,
    stratified_folds,
)

__all__ = ["ExactFit", "fit_exact", "install_probe", "probabilities"]

SplitFeatures = dict[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ExactFit:
    """What an exact fit chose and measured.

    Attributes:
        probe: The probe refitted on every labelled image.
        candidate: The feature set with its cross-validated path.
        labelled: Number of labelled images (train + val).
        val_acc: Accuracy on val of the probe fitted on train alone (``None`` without val).
        folds: Folds per repeat of the cross-validation.
    """

    probe: Probe
    candidate: Candidate
    labelled: int
    val_acc: float | None
    folds: int = 5

    def record(self, tested: int | None) -> dict[str, Any]:
        """Plain data for metrics.json."""
        return {
            "cv_acc": round(self.candidate.mean, 4),
            "cv_std": round(self.candidate.std, 4),
            "l2": self.probe.l2,
            "labelled": self.labelled,
            "expected_accuracy": expected_accuracy(
                [self.candidate], self.candidate, self.labelled, tested, 1.0 / self.folds
            ),
        }


def fit_exact(
    features: SplitFeatures,
    name: str,
    stages: tuple[int | None, ...],
    classes: int,
    seed: int = 42,
) -> ExactFit:
    """Choose the L2 strength on folds over train + val, refit on all, score val.

    Args:
        features: ``split -> (features, labels)`` with ``train`` and ``val`` (and ``test``).
        name: Name of the feature set (for reports).
        stages: What the features are (``probe_stage``'s stages, ``None`` for the top).
        classes: Number of classes.
        seed: Seed of the folds (and of the subsample past :data:`~tlkit.probe.MAX_CV_IMAGES`).

    Returns:
        The :class:`ExactFit`.

    Raises:
        TlkitError: If a class has no labelled image.
    """
    x = torch.cat([features["train"][0], features["val"][0]]).double()
    y = torch.cat([features["train"][1], features["val"][1]])
    present = set(y.tolist())
    missing = [c for c in range(classes) if c not in present]
    if missing:
        raise TlkitError(
            f"class index {missing[0]} has no labelled image; every class needs at least 2"
        )
    rows = cv_rows(y.numpy(), seed)
    splits = stratified_folds(y.numpy()[rows], 5, cv_repeats(len(rows)), seed)
    path = cv_path(x[torch.as_tensor(rows)], y.numpy()[rows], splits)
    candidate = Candidate(name, stages, int(x.shape[1]), path)
    probe = fit_probe(x, y, rescale_l2(candidate.l2, len(rows), len(y)), classes)
    val_acc = None
    train_x, train_y = features["train"]
    if len(features["val"][1]):
        strength = rescale_l2(candidate.l2, len(rows), len(train_y))
        on_train = fit_probe(train_x, train_y, strength, classes)
        val_acc = on_train.accuracy(features["val"][0], features["val"][1])
    repeats = cv_repeats(len(rows))
    return ExactFit(probe, candidate, len(y), val_acc, len(splits) // repeats)


@torch.no_grad()
def install_probe(head: torch.nn.Module, probe: Probe) -> None:
    """Load ``probe`` into a :class:`~tlkit.heads.Head` (a standardiser, if any, then Linear).

    A head without a standardiser gets the standardisation folded into its weights:
    ``W' = W / std`` and ``b' = b - W' @ mean``, the same function.
    """
    linear = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    if len(linear) != 1:
        raise TlkitError("solver exact fits a linear head: set head_hidden to 0")
    standardizer = getattr(head, "standardizer", None)
    weight, bias = probe.weight, probe.bias
    if standardizer is not None:
        standardizer.mean.copy_(probe.mean.to(standardizer.mean))
        standardizer.std.copy_(probe.std.to(standardizer.std))
        standardizer.fitted.fill_(True)
    else:
        weight = weight / probe.std
        bias = bias - weight @ probe.mean
    linear[0].weight.copy_(weight.to(linear[0].weight))
    linear[0].bias.copy_(bias.to(linear[0].bias))


def probabilities(head: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Class probabilities of the installed head on ``features``, in batches."""
    head.eval()
    with torch.no_grad():
        chunks = [head(x.float()).softmax(-1) for x in torch.split(features, 4096)]
    return torch.cat(chunks) if chunks else torch.zeros(0)
