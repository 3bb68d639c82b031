"""Fit a frozen-backbone TransferModule's head exactly, from features, and measure it.

The frozen cells (``solver: auto`` in the small recipes) need no epochs: the head is the exact
probe of :mod:`tlkit.probe`, its L2 strength chosen by repeated stratified k-fold over every
labelled image (train and val together), then refitted on all of them. The validation split,
when there is one, is still scored, by the same probe fitted on the training split alone.

The features come from the caller: the run's feature cache (one pass over each split), or the
features ``tlkit advise`` already measured for ``--recipe auto``. :func:`finetune_exact` is the
whole run of ``tlkit finetune`` for such a recipe: no training loop, the head solved, and the same
run directory an epoch-trained run writes (checkpoint, metrics.json, config, report).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlkit.advise import Candidate, expected_accuracy, feature_stages
from tlkit.balance import balances_for, imbalance_ratio
from tlkit.errors import TlkitError
from tlkit.probe import (
    Probe,
    cv_path,
    cv_repeats,
    cv_rows,
    fit_probe,
    rescale_l2,
    scales_for,
    stratified_folds,
)

__all__ = [
    "ExactFit",
    "ExactRun",
    "finetune_exact",
    "fit_exact",
    "install_probe",
    "probabilities",
    "write_checkpoint",
]

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
        on_train: The probe fitted on train alone (``None`` without val): what ``val_acc`` scores.
        options: Every class treatment and feature scaling scored on the folds (the chosen
            one among them), when there was more than one.
        imbalance: Largest over smallest class count of the labelled images.
        counts: Labelled images per class the folds were drawn from.
    """

    probe: Probe
    candidate: Candidate
    labelled: int
    val_acc: float | None
    folds: int = 5
    on_train: Probe | None = None
    options: tuple[Candidate, ...] = ()
    imbalance: float = 1.0
    counts: tuple[int, ...] = ()

    def record(self, tested: int | None) -> dict[str, Any]:
        """Plain data for metrics.json."""
        chosen = self.candidate
        record = {
            "cv_acc": round(chosen.mean, 4),
            "cv_std": round(chosen.std, 4),
            "l2": self.probe.l2,
            "labelled": self.labelled,
            "balance": self.probe.balance,
            "scale": self.probe.scale,
            "expected_accuracy": expected_accuracy(
                self.options or [chosen],
                chosen,
                self.labelled,
                tested,
                1.0 / self.folds,
                self.counts,
            ),
        }
        if chosen.path.plain is not None:
            record["cv_metric"] = chosen.path.metric
            record["cv_plain_acc"] = round(float(chosen.path.plain_folds().mean()), 4)
        for kind, key in (("balance", lambda c: c.path.balance.name), ("scale", _scale)):
            named: dict[str, float] = {}
            for c in self.options:
                named[key(c)] = max(named.get(key(c), 0.0), round(c.mean, 4))
            if len(named) > 1:  # the best of each over the other choice
                record[f"{kind}_options"] = named
        return record

    def expected_after(
        self, advised: dict[str, Any], probe: dict[str, Any], tested: int | None
    ) -> dict[str, Any]:
        """advise's expected accuracy of these features carried over to this fit.

        advise scores its candidates with one class treatment and per-feature scaling
        (``probe``: its chosen candidate's record) and corrects for its choice among them; this
        fit then chose among treatments and scalings on the same folds. The estimate moves by
        what that choice gained there over advise's setting, less its own selection bias
        (:func:`~tlkit.advise.expected_accuracy` over the options); the interval keeps the
        wider of the two half-widths.
        """
        options = self.options or (self.candidate,)
        own = expected_accuracy(
            options, self.candidate, self.labelled, tested, 1.0 / self.folds, self.counts
        )
        scale, balance = probe.get("scale", "feature"), probe.get("balance", "none")
        base = [c for c in self.options if (_scale(c), c.path.balance.name) == (scale, balance)]
        same = feature_stages(probe.get("stage")) == self.candidate.stages
        if not same or not base or own["metric"] != advised.get("metric", own["metric"]):
            return advised
        shift = self.candidate.mean - base[0].mean - own["bias"]
        estimate = min(max(advised["estimate"] + shift, 0.0), 1.0)
        half = max(_half(advised), _half(own))
        return {
            "estimate": round(estimate, 4),
            "low": round(max(estimate - half, 0.0), 4),
            "high": round(min(estimate + half, 1.0), 4),
            "bias": round(advised["bias"] - shift, 4),
            "metric": own["metric"],
        }


def _half(expected: dict[str, float]) -> float:
    """Half-width of an interval (the side not cut at 0 or 1)."""
    return max(expected["high"] - expected["estimate"], expected["estimate"] - expected["low"])


def _scale(candidate: Candidate) -> str:
    return candidate.path.scale


def _labelled(features: SplitFeatures, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train + val features (float64) and labels; every class must have an image."""
    x = torch.cat([features["train"][0], features["val"][0]]).double()
    y = torch.cat([features["train"][1], features["val"][1]])
    missing = sorted(set(range(classes)) - set(y.tolist()))
    if missing:
        raise TlkitError(
            f"class index {missing[0]} has no labelled image; every class needs at least 2"
        )
    return x, y


def fit_exact(
    features: SplitFeatures,
    name: str,
    stages: tuple[int | None, ...],
    classes: int,
    seed: int = 42,
    scales: tuple[str, ...] | None = None,
) -> ExactFit:
    """Choose the L2 strength on folds over train + val, refit on all, score val.

    Args:
        features: ``split -> (features, labels)`` with ``train`` and ``val`` (and ``test``).
        name: Name of the feature set (for reports).
        stages: What the features are (``probe_stage``'s stages, ``None`` for the top).
        classes: Number of classes.
        seed: Seed of the folds (and of the subsample past :data:`~tlkit.probe.MAX_CV_IMAGES`).
        scales: The feature scalings to choose among (:data:`~tlkit.probe.SCALES`), on the
            same folds as the class treatments; default :func:`~tlkit.probe.scales_for`.

    Returns:
        The :class:`ExactFit`.

    Raises:
        TlkitError: If a class has no labelled image.
    """
    x, y = _labelled(features, classes)
    rows = cv_rows(y.numpy(), seed)
    splits = stratified_folds(y.numpy()[rows], 5, cv_repeats(len(rows)), seed)
    balances, balanced_score = balances_for(y.numpy())
    scales = scales or scales_for(len(stages))
    cv_x, cv_y = x[torch.as_tensor(rows)], y.numpy()[rows]
    options = tuple(
        Candidate(
            name,
            stages,
            int(x.shape[1]),
            cv_path(cv_x, cv_y, splits, balance=b, balanced_score=balanced_score, scale=scale),
        )
        for scale in scales
        for b in balances
    )
    candidate = max(options, key=lambda c: round(c.mean, 9))  # ties: the simpler treatment
    balance, scale = candidate.path.balance, candidate.path.scale
    probe = fit_probe(x, y, rescale_l2(candidate.l2, len(rows), len(y)), classes, balance, scale)
    val_acc = on_train = None
    train_x, train_y = features["train"]
    if len(features["val"][1]):
        strength = rescale_l2(candidate.l2, len(rows), len(train_y))
        on_train = fit_probe(train_x, train_y, strength, classes, balance, scale)
        val_acc = on_train.accuracy(features["val"][0], features["val"][1])
    repeats = cv_repeats(len(rows))
    scored = options if len(options) > 1 else ()
    folds = len(splits) // repeats
    counts = tuple(np.bincount(cv_y, minlength=classes).tolist())
    ratio = imbalance_ratio(y.numpy())
    return ExactFit(probe, candidate, len(y), val_acc, folds, on_train, scored, ratio, counts)


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


@dataclass
class ExactRun:
    """Where an exact run writes and what it was handed.

    Attributes:
        run_dir: The run directory.
        recipe: Recipe name, for the records.
        seed: Seed of the folds.
        decision: ``--recipe auto``'s report, if any.
        features: ``--recipe auto``'s measured :class:`~tlkit.advise.StageFeatures`, if any.
    """

    run_dir: Path
    recipe: str
    seed: int = 42
    decision: dict[str, Any] | None = None
    features: Any = None


def _features(model, datamodule, run: ExactRun) -> dict:
    """``split -> (features, labels)`` for the features the model's head reads."""
    stage = model.strategy.feature_stage
    stages = stage if isinstance(stage, tuple) else (stage,)
    splits = datamodule.check_images()
    same = run.features is not None and all(
        len(run.features.labels(name)) == len(splits[name]) for name in ("train", "val", "test")
    )
    if same and model.strategy.grid == 1:  # what advise measured: no second pass over the images
        return {
            name: (run.features.select(name, stages), run.features.labels(name))
            for name in ("train", "val", "test")
        }
    extractor = model.frozen_feature_extractor()
    return datamodule.split_features(extractor, device=model.device)


def write_checkpoint(model, datamodule, path: Path) -> Path:
    """A Lightning checkpoint of ``model`` (``load_checkpoint`` and ``load_from_checkpoint``
    read it like one written by the Trainer)."""
    import lightning
    import torch

    from tlkit.utils import atomic_path

    checkpoint: dict[str, Any] = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "datamodule_hyper_parameters": dict(datamodule.hparams),
    }
    model.on_save_checkpoint(checkpoint)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _name(stages: tuple) -> str:
    return "+".join("top" if s is None else f"stage {s}" for s in stages)


def finetune_exact(model, datamodule, run: ExactRun) -> dict[str, Any]:
    """Fit ``model``'s head exactly, test it, write the run directory; return metrics.json."""
    from tlkit.report import evaluation_metrics, write_run_report

    start = time.perf_counter()
    features = _features(model, datamodule, run)
    extracted = time.perf_counter() - start
    stage = model.strategy.feature_stage
    stages = stage if isinstance(stage, tuple) else (stage,)
    fit = fit_exact(features, _name(stages), stages, model.hparams.num_classes, run.seed)
    install_probe(model.head, fit.probe)
    fit_seconds = time.perf_counter() - start
    seconds = {"features": round(extracted, 3), "probe": round(fit_seconds - extracted, 3)}
    test_x, test_y = features["test"]
    result = evaluation_metrics(probabilities(model.head, test_x), test_y, datamodule.class_names)
    metrics: dict[str, Any] = {
        "test_acc": result["acc"],
        "test_balanced_acc": result["balanced_acc"],
        "test_f1": result["f1"],
        "per_class_test_acc": result["per_class_acc"],
    }
    if "top5" in result:
        metrics["test_top5"] = result["top5"]
    metrics["val_acc"] = fit.val_acc
    metrics.update(fit.record(len(test_y)))
    if run.decision is not None:  # advise's estimate also removes the bias of its choice
        advised = run.decision["expected_accuracy"]
        metrics["expected_accuracy"] = fit.expected_after(
            advised, run.decision["probe"], len(test_y)
        )
    best = run.run_dir / "checkpoints" / "best.ckpt"
    metrics.update(
        epochs=0,
        fit_seconds=round(fit_seconds, 3),
        solver="exact",
        recipe=run.recipe,
        backbone=model.hparams.backbone,
        weights=model.weights_source,
        strategy=model.strategy.describe(),
        plan=model.plan(1),
        best_checkpoint=str(best),
        **datamodule.describe(),
    )
    tested = time.perf_counter()
    write_checkpoint(model, datamodule, best)
    write_checkpoint(model, datamodule, best.with_name("last.ckpt"))
    write_run_report(run.run_dir, metrics, result["confusion_matrix"], datamodule.class_names, [])
    seconds.update(
        test=round(tested - start - fit_seconds, 3),
        checkpoint_and_report=round(time.perf_counter() - tested, 3),
    )
    metrics["seconds"] = seconds  # where the in-process time went
    (run.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
