"""The exact probe as the floor of the large cells: fitted first, and shipped when it wins.

A large-cell run fine-tunes, but the frozen exact probe (:mod:`tlkit.probe`) takes seconds and
is sometimes the better model. :func:`probe_floor` fits it before fine-tuning (on the features
``tlkit advise`` measured, or on one measurement of its own, or on their spatial readout when
that cross-validates higher: :mod:`tlkit.readout`): once on the training split alone, scored on
validation, and once on every labelled image, scored on test. After fine-tuning,
:func:`settle` compares three models on validation, the only split all were selected on
without seeing test: the probe, the fine-tuned model and their ensemble (the mean of the two
members' class probabilities): the ensemble ships as ``best.ckpt`` unless a member beats it
there by more than the noise (:func:`ship`). ``best.ckpt`` is a checkpoint ``tlkit predict``
reads like any other: the probe is the pretrained backbone with the solved head, the ensemble
(:class:`~tlkit.probe_ensemble.ProbeEnsemble`) holds both members; when it is not the
fine-tuned model, that one is kept beside it as ``finetuned.ckpt``.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlkit.balance import balance_named
from tlkit.errors import TlkitError
from tlkit.probe import Probe, fit_probe, rescale_l2
from tlkit.readout import probe_network, probe_spec, spatial_floor

__all__ = [
    "ProbeFloor",
    "probe_floor",
    "probe_network",
    "probe_spec",
    "settle",
    "ship",
    "start_head_from_probe",
]

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
        val_probs: Class probabilities on val of the probe fitted on train alone.
        val_labels: Validation labels, in the datamodule's order.
        on_train: The same probe fitted on the training split alone (``None`` without val):
            what a head that starts from the probe (``head_init: probe``) is given, since the
            fine-tuned model is selected on val.
    """

    probe: dict[str, Any]
    stages: tuple[int | None, ...]
    fitted: Probe
    val_acc: float | None
    test_probs: torch.Tensor
    test_labels: torch.Tensor
    seconds: float
    val_probs: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    on_train: Probe | None = None

    @property
    def grid(self) -> int | list[int]:
        """Cells per side of each stage's map the probe reads (1: pooled, as advise scores)."""
        return self.probe.get("grid", 1)

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


def probe_floor(
    datamodule, model, decision=None, features=None, seed: int = 42, spatial: bool = True
) -> ProbeFloor:
    """Fit the exact probe a large-cell run must beat.

    Args:
        datamodule: The run's :class:`~tlkit.data.TransferDataModule`.
        model: The run's module (its backbone settings say what to measure).
        decision: ``--recipe auto``'s advise report, if any.
        features: The :class:`~tlkit.advise.StageFeatures` advise measured, if any.
        seed: Seed of the measurement's folds.
        spatial: Also fit the spatial readout of advise's probe (:mod:`tlkit.readout`) and
            take it when it cross-validates higher.

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
    balance, scale = balance_named(probe.get("balance", "none")), probe.get("scale", "feature")
    fitted = fit_probe(x, y, rescale_l2(probe["l2"], measured, len(y)), classes, balance, scale)
    val_acc = val_probs = on_train = None
    if len(split["val"][1]):
        train_x, train_y = split["train"]
        strength = rescale_l2(probe["l2"], measured, len(train_y))
        on_train = fit_probe(train_x, train_y, strength, classes, balance, scale)
        val_acc = on_train.accuracy(*split["val"])
        with torch.no_grad():
            val_probs = on_train.logits(split["val"][0]).softmax(-1).float()
    test_x, test_y = split["test"]
    with torch.no_grad():
        probs = fitted.logits(test_x).softmax(-1) if len(test_y) else torch.zeros(0, classes)
    floor = ProbeFloor(probe, stages, fitted, val_acc, probs.float(), torch.as_tensor(test_y),
                       time.perf_counter() - start, val_probs,
                       torch.as_tensor(split["val"][1]), on_train)  # fmt: skip
    return spatial_floor(floor, datamodule, model, features.names[:-1], seed) if spatial else floor


def _probabilities(model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities of ``model`` (in eval mode) over ``loader``, in its order, and the
    labels."""
    from tlkit.head_refit import eval_features

    was_training = model.training
    model.eval()
    features, labels = eval_features(model, loader)
    with torch.no_grad():
        probs = model.head(features.to(model.device)).softmax(-1).float().cpu()
    model.train(was_training)
    return probs, labels


def _accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(-1) == labels).float().mean())


def _ensemble(floor: ProbeFloor, model, datamodule, seed: int) -> dict[str, Any] | None:
    """Validation and test probabilities of the ensemble of the probe and the fine-tuned network
    with its head refitted exactly (:mod:`tlkit.head_refit`; the trained head when it cannot
    be), or ``None`` when the splits cannot be paired (no validation split, or a different
    order of images)."""
    from tlkit.head_refit import refit_head

    if floor.val_probs is None or floor.val_labels is None or not len(floor.test_labels):
        return None
    try:
        refit = refit_head(model, datamodule, seed)
    except TlkitError:  # features no probe converges on: the trained head is what there is
        refit = None
    if refit is None:
        tuned_val, val_labels = _probabilities(model, datamodule.val_dataloader())
        tuned_test, test_labels = _probabilities(model, datamodule.test_dataloader())
    else:
        tuned_val, val_labels = refit.val_probs, refit.val_labels
        tuned_test, test_labels = refit.test_probs, refit.test_labels
    paired = torch.equal(val_labels, floor.val_labels.cpu()) and torch.equal(
        test_labels, floor.test_labels.cpu()
    )
    if not paired:
        return None
    val = (tuned_val + floor.val_probs) / 2
    test = (tuned_test + floor.test_probs) / 2
    return {"val_acc": _accuracy(val, val_labels), "test_probs": test,
            "test_acc": _accuracy(test, test_labels), "refit": refit}  # fmt: skip


def settle(
    floor: ProbeFloor, metrics: dict[str, Any], model, datamodule, seed: int = 42
) -> list | None:
    """Ship the best of the probe, the fine-tuned model and their ensemble on validation;
    update ``metrics`` to say which.

    :func:`ship` decides from the validation accuracies of the three (the probe fitted on train
    alone; the fine-tuned model at its best epoch). When it is not the fine-tuned model,
    ``best.ckpt`` is rewritten as the winner's checkpoint, the fine-tuned one moved to
    ``finetuned.ckpt``, and the test metrics become the winner's. Without a validation split
    the fine-tuned model ships.

    Args:
        floor: From :func:`probe_floor`.
        metrics: The fine-tuned run's metrics.json record (``val_acc``, ``test_acc``,
            ``best_checkpoint``); updated in place.
        model: The fine-tuned module, holding its best checkpoint's weights.
        datamodule: The run's datamodule (class names, checkpoint hyperparameters).
        seed: Seed of the folds that choose the refitted head's L2 strength.

    Returns:
        The winner's test confusion matrix when it is not the fine-tuned model, else ``None``.
    """
    metrics.update(floor.record())
    tuned_val, probe_val = metrics.get("val_acc"), floor.val_acc
    if probe_val is None or tuned_val is None:
        metrics.update(shipped="finetuned", probe_verdict=_verdict(floor, metrics, "finetuned"))
        return None
    ensemble = _ensemble(floor, model, datamodule, seed)
    if ensemble is not None:
        metrics.update(ensemble_val_acc=ensemble["val_acc"], ensemble_test_acc=ensemble["test_acc"])
        if ensemble["refit"] is not None:
            metrics["ensemble_head"] = ensemble["refit"].record
    mean = None if ensemble is None else ensemble["val_acc"]
    count = 0 if floor.val_labels is None else len(floor.val_labels)
    winner = ship(tuned_val, probe_val, mean, count)
    if winner == "finetuned":
        metrics.update(shipped=winner, probe_verdict=_verdict(floor, metrics, winner))
        return None
    best = Path(metrics["best_checkpoint"])
    tuned = best.with_name(FINETUNED_NAME)
    best.replace(tuned)
    if winner == "ensemble":
        _write_ensemble_checkpoint(floor, model, datamodule, best, ensemble["refit"])
        probs, val_acc = ensemble["test_probs"], ensemble["val_acc"]
    else:
        _write_probe_checkpoint(floor, model, datamodule, best)
        probs, val_acc = floor.test_probs, probe_val
    from tlkit.report import evaluation_metrics

    result = evaluation_metrics(probs, floor.test_labels, datamodule.class_names)
    metrics.update(finetuned_test_acc=metrics["test_acc"], finetuned_val_acc=tuned_val,
                   finetuned_checkpoint=str(tuned), shipped=winner)  # fmt: skip
    metrics["probe_verdict"] = _verdict(floor, metrics, winner)
    metrics.update(test_acc=result["acc"], test_f1=result["f1"], val_acc=val_acc)
    metrics.update(test_balanced_acc=result["balanced_acc"])
    if "top5" in result:
        metrics["test_top5"] = result["top5"]
    return result["confusion_matrix"]


def ship(tuned_val: float, probe_val: float, ensemble_val: float | None, val_count: int) -> str:
    """Which model ships, from validation accuracies on ``val_count`` images.

    The noise is one binomial standard error of the better member's accuracy. When fine-tuning
    falls below the probe by more than that, the probe ships (the floor). Otherwise the
    ensemble ships unless the better member beats it by more than the noise: the fine-tuned
    member's figure is the best of its epochs, picked on this same split, so it reads high,
    and an average of two models whose errors differ seldom tests below the better one
    (measured in ``bench/large.py``). Failing that, the better member; ties go to the probe,
    the simpler model.
    """
    best = max(tuned_val, probe_val)
    noise = math.sqrt(best * (1.0 - best) / val_count) if val_count else 0.0
    if tuned_val < probe_val - noise:
        return "probe"
    if ensemble_val is not None and ensemble_val >= best - noise:
        return "ensemble"
    return "finetuned" if tuned_val > probe_val else "probe"


def _verdict(floor: ProbeFloor, metrics: dict[str, Any], winner: str) -> str:
    """The run's one-line account of what ships and why (before the test metrics change)."""
    name = floor.probe["name"]
    tuned_val, probe_val = metrics.get("val_acc"), floor.val_acc
    on_test = f"{100 * (metrics['test_acc'] - floor.test_acc):+.1f} points on test"
    if winner == "finetuned":
        why = "" if probe_val is None or tuned_val is None else (
            f"{100 * tuned_val:.1f} % vs {100 * probe_val:.1f} % on validation, "
        )  # fmt: skip
        return (f"fine-tuning beat the exact probe on {name} ({why}{on_test}): best.ckpt is "
                "the fine-tuned model")  # fmt: skip
    if winner == "ensemble":
        mean = metrics["ensemble_val_acc"]
        refitted = " (its head refitted exactly)" if "ensemble_head" in metrics else ""
        return (
            f"the ensemble of the fine-tuned model{refitted} and the exact probe on {name} is "
            f"within the noise of both or above them on validation ({100 * mean:.1f} % vs "
            f"{100 * tuned_val:.1f} % fine-tuned, {100 * probe_val:.1f} % probe): best.ckpt "
            f"is the ensemble, the fine-tuned model is {FINETUNED_NAME}"
        )
    return (
        f"fine-tuning did NOT beat the exact probe on {name} on validation "
        f"({100 * tuned_val:.1f} % vs {100 * probe_val:.1f} %; {on_test}): best.ckpt is the "
        f"probe, the fine-tuned model is {FINETUNED_NAME}"
    )


def start_head_from_probe(floor: ProbeFloor, model, datamodule) -> str | None:
    """Start ``model``'s head from an exact probe on the training split (``head_init: probe``).

    With BatchNorm statistics frozen (``bn: eval``) that is the floor's probe fitted on train.
    Otherwise BatchNorm normalises with batch statistics while the network trains, and the
    target's statistics differ from the pretraining data's: features the floor's probe never
    saw (on the demo data at 32 px it scores 22 % on validation under batch statistics, 81 % in
    eval mode). So the backbone's running statistics are first re-estimated on the training
    images (AdaBN, Li et al. 2016) and the probe is refitted on the features they give, with
    the floor's L2 strength (71 % under batch statistics there): the fine-tune starts near
    where the probe is.

    Returns:
        A line for the user: what was done, or why the head starts new (no validation split, or
        the probe reads other features than the head); ``None`` when the strategy does not ask.
    """
    from tlkit.exact import install_probe

    if getattr(model.strategy, "head_init", "random") != "probe":
        return None
    name = floor.probe["name"]
    if floor.on_train is None:
        return "head_init probe: no validation split to select on; the head starts new"
    stage, count = model.strategy.feature_stage, len(model.backbone.feature_info)
    (probe_stage, *more) = floor.stages
    if probe_stage is None:
        same = stage is None
    else:
        same = isinstance(stage, int) and stage % count == probe_stage % count
        same = same and model.strategy.grid == 1
    if more or not same:
        return f"head_init probe: the probe reads {name}, not the head's input; the head starts new"
    if model.strategy.bn == "eval":
        install_probe(model.head, floor.on_train)
        return f"the head starts from the exact probe on {name}, fitted on the training split"
    install_probe(model.head, _recalibrated_probe(model, datamodule, floor.on_train))
    return (
        f"the head starts from the exact probe on {name}, refitted on the training split with "
        "BatchNorm statistics re-estimated on it"
    )


@torch.no_grad()
def _recalibrated_probe(model, datamodule, like: Probe) -> Probe:
    """Re-estimate the backbone's BatchNorm running statistics on the training images (under
    the evaluation transform; torch's ``update_bn``, a cumulative average), then fit the probe
    on the features the network gives in eval mode, with ``like``'s L2 strength and scaling.
    The global RNG is left as it was."""
    from torch.optim.swa_utils import update_bn

    from tlkit.head_refit import eval_features, eval_loader

    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        loader = eval_loader(datamodule, "train", datamodule.hparams.batch_size)
        update_bn(loader, model.backbone, model.device)
        model.eval()
        features, labels = eval_features(model, eval_loader(datamodule, "train"))
    model.train(was_training)
    return fit_probe(features, labels, like.l2, datamodule.num_classes, scale=like.scale)


def _write_ensemble_checkpoint(floor: ProbeFloor, model, datamodule, path: Path, refit) -> None:
    """The fine-tuned model (its head the refitted one, when ``refit`` is not ``None``) with the
    probe as its ``probe_partner`` at ``path``."""
    from tlkit.exact import install_probe, write_checkpoint
    from tlkit.probe_ensemble import ProbeEnsemble

    accepted = inspect.signature(type(model).__init__).parameters
    settings = {k: v for k, v in model.hparams.items() if k in accepted}
    ensemble = ProbeEnsemble(probe_spec(floor.probe["stage"], floor.grid), **settings)
    missing, unexpected = ensemble.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("probe_partner.") for k in missing)
    install_probe(ensemble.probe_partner.head, floor.fitted)
    if refit is not None:
        install_probe(ensemble.head, refit.probe)
    write_checkpoint(ensemble, datamodule, path)


def _write_probe_checkpoint(floor: ProbeFloor, model, datamodule, path: Path) -> None:
    """The probe as a frozen-backbone module (pretrained weights, solved head) at ``path``."""
    from tlkit.exact import write_checkpoint

    network = probe_network(model.hparams, floor.probe["stage"], floor.fitted, floor.grid)
    write_checkpoint(network, datamodule, path)
