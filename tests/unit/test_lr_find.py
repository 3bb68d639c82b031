"""The LR finder: a corrected loss curve and fastai's valley suggestion, on a real fit."""

from __future__ import annotations

import math

import lightning as L
import pytest

from tlkit import TransferDataModule, TransferModule
from tlkit.errors import TlkitError
from tlkit.lr_find import _unbiased, find_lr, valley


def test_valley_picks_the_middle_of_the_longest_descent_not_the_noisy_start():
    lrs = [10 ** (-8 + 8 * i / 99) for i in range(100)]
    losses = [2.3 + (0.05 if i % 2 else -0.05) for i in range(30)]  # noisy flat start
    losses += [2.3 - 1.5 * (i / 50) for i in range(50)]  # the long descent, indices 30..79
    losses += [0.8 * math.exp(i / 4) for i in range(20)]  # divergence
    index = valley(losses)
    assert 45 <= index <= 70
    assert 1e-5 < lrs[index] < 1e-1


def test_unbiased_curve_starts_at_the_first_loss():
    beta, raw = 0.98, [2.5, 2.4, 2.45, 2.3]
    avg, lightning_curve = 0.0, []
    for step, loss in enumerate(raw):  # what Lightning records (its counter is one ahead)
        avg = beta * avg + (1 - beta) * loss
        lightning_curve.append(avg / (1 - beta ** (step + 2)))
    fixed = _unbiased(lightning_curve, raw)
    assert fixed[0] == pytest.approx(raw[0])
    assert lightning_curve[0] == pytest.approx(raw[0] / 2, rel=0.02)  # the bias it removes


def test_find_lr_sets_the_model_lr_and_plots(make_shapes, tmp_path, one_thread):
    data = TransferDataModule(
        str(make_shapes(per_class=8)), backbone="test_efficientnet", image_size=32, augment="none",
        batch_size=4,
    )  # fmt: skip
    model = TransferModule(data.num_classes, backbone="test_efficientnet", pretrained=False, lr=0.5)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    found = find_lr(trainer, model, data, tmp_path / "lr_find.png")
    assert model.hparams.lr == found != 0.5
    assert 1e-8 <= found <= 1.0
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    assert trainer.fit_loop.max_epochs == 2  # restored after the search


def test_find_lr_refuses_lbfgs(make_shapes, tmp_path):
    data = TransferDataModule(str(make_shapes(per_class=4)), backbone="test_efficientnet")
    model = TransferModule(
        data.num_classes, backbone="test_efficientnet", pretrained=False, optimizer="lbfgs"
    )
    with pytest.raises(TlkitError, match="lbfgs"):
        find_lr(L.Trainer(logger=False, default_root_dir=tmp_path), model, data)
