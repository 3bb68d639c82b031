"""The exact probe as the floor of the large cells: fitted first, and shipped when it wins.

A large-cell run fine-tunes, but the frozen exact probe (:mod:`tlkit.probe`) takes seconds and
is sometimes the better model. :func:`probe_floor` fits it before fine-tuning (on the features
``tlkit advise`` measured, or on one measurement of its own): once on the training split alone,
scored on validation, and once on every labelled image, scored on test. After fine-tuning,
:func:`settle` compares the two models on validation, the only split both were selected on
without seeing test: when fine-tuning does not beat the probe there, ``best.ckpt`` becomes a
checkpoint of the probe (the pretrained backbone and the solved head, read by ``tlkit predict``
like any other) and the fine-tuned one is kept beside it as ``finetuned.ckpt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlkit.probe import Probe, fit_probe, rescale_l2

__all__ = ["ProbeFloor", "probe_floor", "settle"]

#: Where the fine-tuned model's best checkpoint goes when the probe takes ``best.ckpt``.
FINETUNED_NAME = "finetuned.ckpt"


@dataclass
class ProbeFloor:
    """The exact probe of a large-cell run.

    Attributes:
        probe: The chosen feature set as plain data (``name``, ``stage``, ``l2``, ...).
        stages: The features it reads (``None`` for the top).
        fitted: The probe fitted on every labelled image (what ships if it wins).
        val_acc: Accuracy on val of the same probe fitted on train alone (``None`` without val).
        test_probs: Class probabilities of ``fitted`` on the test split.
        test_labels: Test labels.
        seconds: Time to fit it (features included when measured here).
    """

    probe: dict[str, Any]
    stages: tuple[int | None, ...]
    fitted: Probe
    val_acc: float | None
    test_probs: torch.Tensor
    test_labels: torch.Tensor
    seconds: float

    @property
    def test_acc(self) -> float:
        """The probe's test accuracy."""
        if not len(self.test_labels):
            return float("nan")
        return float((self.test_probs.argmax(-1) == self.test_labels).float().mean())

    def record(self) -> dict[str, Any]:
        """Plain data for metrics.json."""
        return {
            "probe": self.probe,
            "probe_test_acc": self.test_acc,
            "probe_val_acc": self.val_acc,
            "probe_fit_seconds": round(self.seconds, 3),
        }


def probe_floor(datamodule, model, decision=None, features=None, seed: int = 42) -> ProbeFloor:
    """Fit the exact probe a large-cell run must beat.

    Args:
        datamodule: The run's :class:`~tlkit.data.TransferDataModule`.
        model: The run's module (its backbone settings say what to measure).
        decision: ``--recipe auto``'s advise report, if any.
        features: The :class:`~tlkit.advise.StageFeatures` advise measured, if any.
        seed: Seed of the measurement's folds.

    Returns:
        The :class:`ProbeFloor`.
    """
    from tlkit.advise import feature_stages, measure

    start = time.perf_counter()
    if features is None:
        hp = model.hparams
        decision, features = measure(
            str(datamodule.hparams.data),
            backbone=hp.backbone,
            weights=hp.weights,
            pretrained=hp.pretrained,
            seed=seed,
            with_test=True,
            datamodule=datamodule,
        )
    probe = decision["probe"]
    stages = feature_stages(probe["stage"])
    split = {s: (features.select(s, stages), features.labels(s)) for s in ("train", "val", "test")}
    measured = decision["evidence"]["images_measured"]
    classes = datamodule.num_classes
    x = torch.cat([split["train"][0], split["val"][0]])
    y = torch.cat([split["train"][1], split["val"][1]])
    fitted = fit_probe(x, y, rescale_l2(probe["l2"], measured, len(y)), classes)
    val_acc = None
    if len(split["val"][1]):
        train_x, train_y = split["train"]
        on_train = fit_probe(train_x, train_y, rescale_l2(probe["l2"], measured, len(train_y)),
                             classes)  # fmt: skip
        val_acc = on_train.accuracy(*split["val"])
    test_x, test_y = split["test"]
    with torch.no_grad():
        probs = fitted.logits(test_x).softmax(-1) if len(test_y) else torch.zeros(0, classes)
    return ProbeFloor(probe, stages, fitted, val_acc, probs.float(), torch.as_tensor(test_y),
                      time.perf_counter() - start)  # fmt: skip


def settle(floor: ProbeFloor, metrics: dict[str, Any], model, datamodule) -> list | None:
    """Ship the better of the fine-tuned model and the probe; update ``metrics`` to say which.

    Fine-tuning ships when its best validation accuracy is above the probe's (fitted on train
    alone); otherwise the probe does: ``best.ckpt`` is rewritten as the probe's checkpoint, the
    fine-tuned one moved to ``finetuned.ckpt``, and the test metrics become the probe's. Without
    a validation split the fine-tuned model ships.

    Args:
        floor: From :func:`probe_floor`.
        metrics: The fine-tuned run's metrics.json record (``val_acc``, ``test_acc``,
            ``best_checkpoint``); updated in place.
        model: The fine-tuned module (for its backbone settings).
        datamodule: The run's datamodule (class names, checkpoint hyperparameters).

    Returns:
        The probe's test confusion matrix when the probe ships, else ``None``.
    """
    metrics.update(floor.record())
    name = floor.probe["name"]
    tuned_val, probe_val = metrics.get("val_acc"), floor.val_acc
    gap = 100 * (metrics["test_acc"] - floor.test_acc)
    on_test = f"{gap:+.1f} points on test"
    if probe_val is None or tuned_val is None or tuned_val > probe_val:
        metrics["shipped"] = "finetuned"
        why = "" if probe_val is None or tuned_val is None else (
            f"{100 * tuned_val:.1f} % vs {100 * probe_val:.1f} % on validation, "
        )  # fmt: skip
        metrics["probe_verdict"] = (
            f"fine-tuning beat the exact probe on {name} ({why}{on_test}): best.ckpt is the "
            "fine-tuned model"
        )
        return None
    best = Path(metrics["best_checkpoint"])
    tuned = best.with_name(FINETUNED_NAME)
    best.replace(tuned)
    _write_probe_checkpoint(floor, model, datamodule, best)
    from tlkit.report import evaluation_metrics

    result = evaluation_metrics(floor.test_probs, floor.test_labels, datamodule.class_names)
    metrics.update(
        finetuned_test_acc=metrics["test_acc"],
        finetuned_val_acc=tuned_val,
        finetuned_checkpoint=str(tuned),
        test_acc=result["acc"],
        test_f1=result["f1"],
        val_acc=probe_val,
        shipped="probe",
    )
    if "top5" in result:
        metrics["test_top5"] = result["top5"]
    metrics["probe_verdict"] = (
        f"fine-tuning did NOT beat the exact probe on {name} on validation "
        f"({100 * tuned_val:.1f} % vs {100 * probe_val:.1f} %; {on_test}): best.ckpt is the "
        f"probe, the fine-tuned model is {FINETUNED_NAME}"
    )
    return result["confusion_matrix"]


def _write_probe_checkpoint(floor: ProbeFloor, model, datamodule, path: Path) -> None:
    """The probe as a frozen-backbone module (pretrained weights, solved head) at ``path``."""
    from tlkit.exact import install_probe, write_checkpoint
    from tlkit.module import TransferModule

    hp = model.hparams
    if floor.stages == (None,):
        strategy, args = "linear_probe", {"bn": "frozen_eval"}
    else:
        args = {"stage": floor.probe["stage"], "standardize": True, "bn": "frozen_eval"}
        strategy = "probe_stage"
    probe_model = TransferModule(
        num_classes=hp.num_classes,
        backbone=hp.backbone,
        weights=hp.weights,
        pretrained=hp.pretrained,
        trust_weights=hp.trust_weights,
        strategy=strategy,
        strategy_args=args,
        class_names=hp.class_names,
        solver="exact",
    )
    install_probe(probe_model.head, floor.fitted)
    write_checkpoint(probe_model, datamodule, path)
