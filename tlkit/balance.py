"""Classes of unequal size: how imbalanced a labelled set is, and how the exact probe treats it.

A probe fitted on a training set dominated by a few classes predicts those classes too often
and its cross-validated accuracy describes the training mix, not a test set with equal classes.
On imbalanced data (:data:`IMBALANCE_RATIO`) the probe is scored on balanced accuracy (mean
recall over classes) and the cross-validation chooses among the treatments of
:data:`BALANCES`: none, class weights ``count ** -power`` (square root or fully balanced, as
scikit-learn's ``class_weight="balanced"``), or post-hoc logit adjustment (Menon et al., ICLR
2021, "Long-tail learning via logit adjustment").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tlkit.errors import TlkitError

__all__ = [
    "BALANCED",
    "BALANCES",
    "IMBALANCE_RATIO",
    "NO_BALANCE",
    "TRAINING_BALANCE",
    "Balance",
    "TrainingBalance",
    "advised_balance",
    "balance_named",
    "balanced_accuracy",
    "balances_for",
    "class_weights",
    "imbalance_ratio",
    "log_prior",
    "training_balance",
]

#: From this ratio of the largest to the smallest class count the classes count as imbalanced:
#: the probe is then scored on balanced accuracy and its class treatment chosen on the folds.
IMBALANCE_RATIO = 1.5


@dataclass(frozen=True)
class Balance:
    """How the probe treats classes of unequal size.

    Attributes:
        name: ``none``, ``sqrt``, ``balanced`` or ``logit-adjusted``.
        power: Each image's loss weighs ``count(class) ** -power`` (0: all equal, 1: every class
            the same total weight, scikit-learn's ``class_weight="balanced"``).
        adjust: Subtract the log of the training class frequencies from the logits at prediction
            (post-hoc logit adjustment, Menon et al., ICLR 2021): the Bayes rule for a test set
            with equal classes.
    """

    name: str
    power: float = 0.0
    adjust: bool = False


NO_BALANCE = Balance("none")
BALANCED = Balance("balanced", 1.0)
#: The class treatments the cross-validation chooses among on imbalanced data.
BALANCES: tuple[Balance, ...] = (
    NO_BALANCE,
    Balance("sqrt", 0.5),
    BALANCED,
    Balance("logit-adjusted", adjust=True),
)


def balance_named(name: str) -> Balance:
    """The :class:`Balance` called ``name``."""
    for balance in BALANCES:
        if balance.name == name:
            return balance
    choices = ", ".join(b.name for b in BALANCES)
    raise TlkitError(f"unknown class balance '{name}'; choose one of {choices}")


def balances_for(labels) -> tuple[tuple[Balance, ...], bool]:
    """The class treatments to score on ``labels`` and whether to score on balanced accuracy:
    all of :data:`BALANCES` on balanced accuracy when the largest class holds at
    least :data:`IMBALANCE_RATIO` times the smallest, else plain accuracy alone."""
    if imbalance_ratio(labels) >= IMBALANCE_RATIO:
        return BALANCES, True
    return (NO_BALANCE,), False


def advised_balance(imbalanced: bool) -> Balance:
    """The class treatment advise scores its candidates with: class-balanced weights on
    imbalanced data (the choice among treatments is made for the chosen features only)."""
    return BALANCED if imbalanced else NO_BALANCE


def _counts(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=classes).double()


def imbalance_ratio(labels: Sequence[int] | np.ndarray | torch.Tensor) -> float:
    """Largest over smallest class count among the classes present (1.0: equal classes)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = counts[counts > 0]
    return float(counts.max() / counts.min()) if len(counts) else 1.0


def class_weights(labels: torch.Tensor, classes: int, power: float) -> torch.Tensor | None:
    """Per-class loss weights ``count ** -power`` scaled so the images' weights average 1
    (``power`` 1: scikit-learn's ``class_weight="balanced"``, ``n / (classes * count)``);
    ``None`` for ``power`` 0. Classes without images get weight 0."""
    if power == 0:
        return None
    counts = _counts(labels, classes)
    weights = torch.where(counts > 0, counts.clamp_min(1).pow(-power), torch.zeros_like(counts))
    return weights * len(labels) / float((weights * counts).sum())


def log_prior(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Log of the class frequencies of ``labels`` (a class without images counts as half)."""
    counts = _counts(labels, classes).clamp_min(0.5)
    return (counts / counts.sum()).log()


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in ``labels``."""
    recalls = [float((predicted[labels == c] == c).double().mean()) for c in torch.unique(labels)]
    return float(np.mean(recalls)) if recalls else 0.0


#: What ``class_balance: auto`` trains with on imbalanced classes (measured in
#: bench/balanced_loss.py).
TRAINING_BALANCE = "logit-adjusted"


@dataclass(frozen=True)
class TrainingBalance:
    """How an epoch-trained run's loss treats unequal classes.

    Attributes:
        balance: The treatment (``logit-adjusted``: the logit-adjusted loss of Menon et al.,
            ICLR 2021, cross-entropy on ``logits + log prior``, so the raw logits predict as for
            equal classes; the others weigh each image's loss ``count ** -power``).
        weight: Per-class loss weights, or ``None``.
        log_prior: Log training class frequencies added to the logits in the loss, or ``None``.
    """

    balance: Balance
    weight: torch.Tensor | None = None
    log_prior: torch.Tensor | None = None


def training_balance(name: str, labels: Sequence[int] | None, classes: int) -> TrainingBalance:
    """The loss treatment ``name`` (``auto``: :data:`TRAINING_BALANCE` when the classes are
    imbalanced, see :data:`IMBALANCE_RATIO`, else none) for training ``labels``.

    Raises:
        TlkitError: For an unknown name, or a treatment other than none without ``labels``.
    """
    if name != "auto":
        balance_named(name)  # an unknown name fails here, with the choices
    if labels is None:
        if name not in ("auto", "none"):
            raise TlkitError(
                f"class_balance {name} needs the training labels: train with tlkit's "
                "TransferDataModule, or set class_balance none"
            )
        return TrainingBalance(NO_BALANCE)
    ratio = imbalance_ratio(labels)
    if name == "auto":
        name = TRAINING_BALANCE if ratio >= IMBALANCE_RATIO else "none"
    balance = balance_named(name)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    prior = log_prior(y, classes) if balance.adjust else None
    return TrainingBalance(balance, class_weights(y, classes, balance.power), prior)
