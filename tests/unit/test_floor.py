"""The large cells never ship worse than the exact probe: compared on validation, the better one
becomes ``best.ckpt``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_shapes, write_sides

from tlkit.cli import main
from tlkit.errors import TlkitError
from tlkit.inference import ensemble_probabilities, load_checkpoint

pytestmark = pytest.mark.usefixtures("isolated_cwd")


@pytest.fixture
def tiny(tmp_path) -> list[str]:
    """A tiny backbone with weights from a file: every fresh copy of it is the same network, and
    so is every test run's (seeded), so the probe advise chooses on it is the same each time."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = timm.create_model("test_efficientnet", num_classes=0)
    save_file(network.state_dict(), str(path))
    return ["--backbone", "test_efficientnet", "--weights", str(path), "--image-size", "32"]


@pytest.fixture
def data(tmp_path) -> Path:
    """Shape images: 16 per class in train/ (no val/), 6 per class in test/."""
    folder = tmp_path / "data"
    write_shapes(folder / "train", per_class=16, seed=0)
    write_shapes(folder / "test", per_class=6, seed=1)
    return folder


def _datamodule(data: Path, tiny: list[str]):
    """The tiny backbone's datamodule on ``data``, set up for fit and test."""
    from tlkit.data import TransferDataModule

    dm = TransferDataModule(str(data), backbone=tiny[1], image_size=32, augment="none",
                            cache_features=False)  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    return dm


def _test_probs(checkpoint: Path, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``tlkit predict`` gives for every image of ``folder``, and the labels."""
    items, labels = [], []
    for label, class_dir in enumerate(sorted(folder.iterdir())):
        for image in sorted(class_dir.iterdir()):
            items.append(str(image))
            labels.append(label)
    probs = ensemble_probabilities([load_checkpoint(checkpoint)], items, progress=False)
    return probs, torch.tensor(labels)


def _test_accuracy(checkpoint: Path, folder: Path) -> float:
    probs, labels = _test_probs(checkpoint, folder)
    return float((probs.argmax(1) == labels).float().mean())


def test_when_fine_tuning_loses_on_validation_best_ckpt_is_the_probe(data, tiny, capsys):
    # One epoch at a vanishing LR leaves the new head random: the probe wins on validation.
    argv = ["finetune", "--recipe", "large-similar", "--data", str(data), *tiny, "--epochs", "1"]
    assert main([*argv, "--model.lr", "1e-9", "--out", "RUN"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["shipped"] == "probe"
    assert metrics["probe_val_acc"] >= metrics["finetuned_val_acc"]
    assert metrics["test_acc"] == pytest.approx(metrics["probe_test_acc"])
    assert "best.ckpt is the probe" in out and "did NOT beat" in out
    best, tuned = Path("RUN/checkpoints/best.ckpt"), Path("RUN/checkpoints/finetuned.ckpt")
    assert tuned.is_file() and metrics["finetuned_checkpoint"] == str(tuned.resolve())
    # What predict reads is the probe, and it scores what the run reported.
    assert load_checkpoint(best).model.hparams.solver == "exact"
    assert _test_accuracy(best, data / "test") == pytest.approx(metrics["test_acc"], abs=1e-6)
    assert _test_accuracy(tuned, data / "test") == pytest.approx(
        metrics["finetuned_test_acc"], abs=1e-6
    )
    report = Path("RUN/report.md").read_text()
    assert f"{metrics['test_acc']:.4f}" in report


def test_when_fine_tuning_wins_on_validation_nothing_is_swapped(tmp_path):
    from types import SimpleNamespace

    from tlkit.floor import ProbeFloor, settle
    from tlkit.probe import fit_probe

    x, y = torch.randn(20, 4), torch.arange(20) % 2
    probs, labels = torch.full((10, 2), 0.5), torch.zeros(10, dtype=torch.int64)
    top = {"name": "top", "stage": None}
    floor = ProbeFloor(top, (None,), fit_probe(x, y, 1.0, 2), 0.5, probs, labels, 0.1)
    best = tmp_path / "best.ckpt"
    best.write_bytes(b"fine-tuned")
    metrics = {"val_acc": 0.75, "test_acc": 0.8, "best_checkpoint": str(best)}
    assert settle(floor, metrics, SimpleNamespace(), SimpleNamespace()) is None
    assert metrics["shipped"] == "finetuned" and metrics["test_acc"] == 0.8
    assert "75.0 % vs 50.0 % on validation" in metrics["probe_verdict"]
    assert best.read_bytes() == b"fine-tuned" and not (tmp_path / "finetuned.ckpt").exists()


def test_an_ensemble_that_beats_both_members_on_validation_ships_and_predicts_as_reported(
    tmp_path, data, tiny
):
    from tlkit.floor import _probabilities, probe_floor, settle
    from tlkit.head_refit import refit_head
    from tlkit.module import TransferModule

    backbone, weights = tiny[1], tiny[3]
    dm = _datamodule(data, tiny)
    model = TransferModule(dm.num_classes, backbone, weights=weights, strategy="full",
                           class_names=dm.class_names)  # fmt: skip
    # Lightning's CLI records how it built the model among its hyperparameters.
    model.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    floor = probe_floor(dm, model)
    # The ensemble's fine-tuned member is the network with its head refitted exactly.
    refit = refit_head(model, dm)
    tuned, labels = refit.val_probs, refit.val_labels
    assert torch.equal(labels, floor.val_labels)
    # A probe that is sure where the fine-tuned member errs and leans (barely) the wrong way
    # where it is right: each member alone loses to their mean on validation.
    right = tuned.argmax(-1) == labels
    wrong_class = (labels + 1) % dm.num_classes
    flat = torch.full_like(tuned, 1.0 / dm.num_classes)
    flat[torch.arange(len(labels)), wrong_class] += 1e-4
    floor.val_probs = torch.where(right[:, None], flat, torch.eye(dm.num_classes)[labels])
    floor.val_acc = float((~right).float().mean())
    best = tmp_path / "best.ckpt"
    from tlkit.exact import write_checkpoint

    write_checkpoint(model, dm, best)
    test_probs, _ = _probabilities(model, dm.test_dataloader())
    test_acc = float((test_probs.argmax(-1) == floor.test_labels).float().mean())
    # The fine-tuned model's reported validation score ties the probe's (no floor verdict).
    metrics = {"val_acc": floor.val_acc, "test_acc": test_acc,
               "best_checkpoint": str(best)}  # fmt: skip
    settle(floor, metrics, model, dm)
    assert metrics["shipped"] == "ensemble", metrics["probe_verdict"]
    assert metrics["val_acc"] == 1.0 and metrics["finetuned_test_acc"] == test_acc
    assert "(its head refitted exactly)" in metrics["probe_verdict"]
    assert "best.ckpt is the ensemble" in metrics["probe_verdict"]
    assert metrics["ensemble_head"]["l2"] == refit.probe.l2
    loaded = load_checkpoint(best).model
    assert loaded.probe_partner is not None and loaded.probe_partner.hparams.solver == "exact"
    # What predict reads is the mean of both members, and it scores what the run reported.
    assert _test_accuracy(best, data / "test") == pytest.approx(metrics["test_acc"], abs=1e-6)
    mean = (refit.test_probs + floor.test_probs) / 2
    expected = float((mean.argmax(-1) == floor.test_labels).float().mean())
    assert metrics["test_acc"] == pytest.approx(expected)
    predicted, predicted_labels = _test_probs(best, data / "test")
    assert torch.equal(predicted_labels, floor.test_labels)
    assert torch.allclose(predicted, mean, atol=1e-4)
    # finetuned.ckpt is the network as it was trained, its own head included.
    assert _test_accuracy(tmp_path / "finetuned.ckpt", data / "test") == pytest.approx(test_acc)
    with pytest.raises(TlkitError, match="start from its fine-tuned member"):
        loaded.on_fit_start()
    # It exports as one TorchScript model (both members); timm has no model that holds it.
    from tlkit.export import export

    ensemble = load_checkpoint(best)
    with pytest.raises(TlkitError, match="format=onnx"):
        export(ensemble, tmp_path / "timm", "safetensors")
    export(ensemble, tmp_path / "scripted", "torchscript")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        scripted = torch.jit.load(str(tmp_path / "scripted.pt"))(x)
        assert torch.allclose(scripted, ensemble.model(x), atol=1e-4)


def test_ship_keeps_the_floor_and_prefers_the_ensemble_within_the_noise():
    from tlkit.floor import ship

    # 400 validation images at 85 %: one binomial standard error is 1.8 points.
    assert ship(0.80, 0.85, 0.86, 400) == "probe"  # fine-tuning clearly below the probe
    assert ship(0.855, 0.84, 0.842, 400) == "ensemble"  # 1.3 below the best: inside the noise
    assert ship(0.855, 0.84, 0.83, 400) == "finetuned"  # 2.5 below: the better member
    assert ship(0.84, 0.855, 0.83, 400) == "probe"
    assert ship(0.855, 0.84, None, 400) == "finetuned"
    assert ship(0.85, 0.85, None, 400) == "probe"  # a tie goes to the simpler model
    # More validation images, less noise: the same 1.3-point shortfall is now too much.
    assert ship(0.855, 0.84, 0.842, 4000) == "finetuned"


def test_a_head_started_from_the_probe_predicts_what_the_probe_does(data, tiny):
    from tlkit.floor import _probabilities, probe_floor, start_head_from_probe
    from tlkit.module import TransferModule

    backbone, weights = tiny[1], tiny[3]
    dm = _datamodule(data, tiny)

    def network(stage, head_init="probe", bn="eval"):
        args = {"stage": stage, "head_init": head_init, "bn": bn}
        return TransferModule(dm.num_classes, backbone, weights=weights, strategy="full",
                              strategy_args=args)  # fmt: skip

    floor = probe_floor(dm, network(None, "random"), spatial=False)
    (stage,) = floor.stages
    model = network(stage)
    assert model.head.standardizer is not None
    note = start_head_from_probe(floor, model, dm)
    assert note == f"the head starts from the exact probe on {floor.probe['name']}, " + (
        "fitted on the training split"
    )
    # BatchNorm statistics frozen: before any step the fine-tune is the floor's probe fitted on
    # train, validation predictions and all.
    probs, labels = _probabilities(model, dm.val_dataloader())
    assert torch.equal(labels, floor.val_labels)
    assert torch.allclose(probs, floor.val_probs, atol=1e-4)
    # BatchNorm in batch-statistics mode: the statistics are re-estimated on the training
    # images and the probe refitted on the features they give; the network in eval mode then
    # fits the training split as that probe does.
    adapted = network(stage, bn="frozen_eval")
    before = [b.clone() for n, b in adapted.backbone.named_buffers() if n.endswith("running_mean")]
    assert "re-estimated" in start_head_from_probe(floor, adapted, dm)
    after = [b for n, b in adapted.backbone.named_buffers() if n.endswith("running_mean")]
    assert not all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    train_probs, train_labels = _probabilities(adapted, dm.train_dataloader())
    fitted_acc = float((train_probs.argmax(-1) == train_labels).float().mean())
    assert fitted_acc >= floor.val_acc - 0.05 and fitted_acc > 2 / dm.num_classes
    # A head on other features starts new, and says so.
    other = network(0 if stage is None else None)
    before = {k: v.clone() for k, v in other.head.state_dict().items()}
    assert "the head starts new" in start_head_from_probe(floor, other, dm)
    assert all(torch.equal(v, other.head.state_dict()[k]) for k, v in before.items())
    assert start_head_from_probe(floor, network(stage, "random"), dm) is None


def test_the_refitted_head_is_scored_on_val_by_a_fit_on_train_alone(data, tiny):
    from tlkit.exact import fit_exact
    from tlkit.head_refit import eval_features, eval_loader, refit_head
    from tlkit.module import TransferModule

    backbone, weights = tiny[1], tiny[3]
    dm = _datamodule(data, tiny)
    model = TransferModule(dm.num_classes, backbone, weights=weights, strategy="full")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refit = refit_head(model, dm, seed=3)
    # The fine-tuned network is left as it was: finetuned.ckpt is what training made.
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    split = {"train": eval_features(model, eval_loader(dm, "train")),
             "val": eval_features(model, dm.val_dataloader()),
             "test": eval_features(model, dm.test_dataloader())}  # fmt: skip
    fit = fit_exact(split, "features", (None,), dm.num_classes, seed=3)
    # Validation is scored by the head fitted on train alone; what ships saw val too.
    val_acc = float((refit.val_probs.argmax(-1) == refit.val_labels).float().mean())
    assert val_acc == pytest.approx(refit.record["val_acc"]) == pytest.approx(fit.val_acc)
    assert torch.equal(refit.val_labels, split["val"][1])
    assert torch.allclose(refit.probe.weight, fit.probe.weight)
    assert not torch.allclose(refit.probe.weight, fit.on_train.weight)
    # A head with a hidden layer has no exact solution: the trained head stays.
    hidden = TransferModule(dm.num_classes, backbone, weights=weights, strategy="full",
                            head_hidden=8)  # fmt: skip
    assert refit_head(hidden, dm) is None


def test_the_floor_reads_the_probe_s_maps_in_cells_when_that_cross_validates_higher(tmp_path, tiny):
    # Only where the square sits tells the classes apart: pooling each map to one vector all
    # but loses it, the spatial readout (the stage before the probe's in 4x4 cells, the
    # probe's own in 2x2) keeps it, and is chosen on the folds advise scored.
    data = tmp_path / "sides"
    write_sides(data / "train", per_class=24, seed=3)
    write_sides(data / "test", per_class=12, seed=4)
    argv = ["finetune", "--recipe", "large-similar", "--data", str(data), *tiny, "--epochs", "1"]
    assert main([*argv, "--model.lr", "1e-9", "--out", "RUN"]) == 0
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    probe, pooled = metrics["probe"], metrics["probe"]["pooled"]
    assert probe["grid"][-2:] == [4, 2] and probe["accuracy"] > pooled["accuracy"]
    assert metrics["probe_test_acc"] >= pooled["test_acc"] + 0.05
    assert metrics["shipped"] == "probe" and probe["name"] in metrics["probe_verdict"]
    # best.ckpt reads the cells it was fitted on, and predicts what the run reported.
    best = Path("RUN/checkpoints/best.ckpt")
    assert list(load_checkpoint(best).model.strategy.grid[-2:]) == [4, 2]
    assert _test_accuracy(best, data / "test") == pytest.approx(metrics["test_acc"], abs=1e-6)
    # It exports to ONNX (export checks onnxruntime's outputs against the model's).
    from tlkit.export import export

    export(load_checkpoint(best), tmp_path / "probe", "onnx")
    # As the ensemble's partner it predicts the mean of both members.
    from tlkit.floor import _probabilities, _write_ensemble_checkpoint, probe_floor
    from tlkit.module import TransferModule

    dm = _datamodule(data, tiny)
    model = TransferModule(dm.num_classes, tiny[1], weights=tiny[3], strategy="full",
                           class_names=dm.class_names)  # fmt: skip
    model.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    floor = probe_floor(dm, model)
    assert floor.grid == probe["grid"]
    _write_ensemble_checkpoint(floor, model, dm, tmp_path / "pair.ckpt", None)
    predicted, labels = _test_probs(tmp_path / "pair.ckpt", data / "test")
    tuned, tuned_labels = _probabilities(model, dm.test_dataloader())
    assert torch.equal(labels, tuned_labels) and torch.equal(labels, floor.test_labels)
    torch.testing.assert_close(predicted, (tuned + floor.test_probs) / 2, atol=1e-4, rtol=0)
    export(load_checkpoint(tmp_path / "pair.ckpt"), tmp_path / "pair", "onnx")
