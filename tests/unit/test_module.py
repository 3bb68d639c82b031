"""Tests for tlkit.module.TransferModule, trained by a real Lightning Trainer on tiny models."""

from __future__ import annotations

import itertools
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit.errors import TlkitError
from tlkit.module import TransferModule
from tlkit.optim import OPTIMIZERS
from tlkit.schedules import make_schedule

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no"),
]

BACKBONES = ("test_resnet", "test_efficientnet")


def toy_data(n: int = 24, num_classes: int = 3, seed: int = 0) -> TensorDataset:
    """3x32x32 noise images; class ``c`` brightens colour channel ``c`` (linearly separable)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = 0.5 * torch.randn(n, 3, 32, 32, generator=gen)
    images[torch.arange(n), labels] += 2.0
    return TensorDataset(images, labels)


def loader(data: TensorDataset, batch_size: int = 8, shuffle: bool = False) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle)


def fit(model: L.LightningModule, train: DataLoader, epochs: int = 1, **kwargs) -> L.Trainer:
    """Fit on CPU without logger, progress bar or (unless given) checkpoints."""
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kwargs,
    }
    trainer = L.Trainer(**options)
    trainer.fit(model, train)
    return trainer


def model(**kwargs) -> TransferModule:
    kwargs.setdefault("backbone", "test_resnet")
    return TransferModule(3, pretrained=False, **kwargs)


@torch.no_grad()
def eval_loss(module: TransferModule, data: TensorDataset) -> float:
    module.eval()
    images, labels = data.tensors
    return F.cross_entropy(module(images), labels).item()


class RecordLR(Callback):
    """The LR of every optimizer group at each training step, keyed by group name."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = trainer.optimizers[0].param_groups
        self.steps.append({g["name"]: g["lr"] for g in groups})


# --- optimizers -----------------------------------------------------------------------------
OPTIMIZER_SETUP = {  # name -> (lr, optimizer class, SGD momentum, nesterov)
    "sgd": (0.1, torch.optim.SGD, 0.0, False),
    "momentum": (0.05, torch.optim.SGD, 0.9, False),
    "nesterov": (0.05, torch.optim.SGD, 0.9, True),
    "adagrad": (0.05, torch.optim.Adagrad, None, None),
    "rmsprop": (1e-3, torch.optim.RMSprop, None, None),
    "adam": (0.01, torch.optim.Adam, None, None),
    "adamw": (0.01, torch.optim.AdamW, None, None),
    "lbfgs": (1.0, torch.optim.LBFGS, None, None),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_the_head(name):
    lr, cls, momentum, nesterov = OPTIMIZER_SETUP[name]
    data = toy_data()
    torch.manual_seed(0)
    module = model(optimizer=name, lr=lr, scheduler="constant")
    head_before = [p.detach().clone() for p in module.head.parameters()]
    before = eval_loss(module, data)
    trainer = fit(module, loader(data, batch_size=24), epochs=5)
    after = eval_loss(module, data)
    assert after < before - 0.01, (name, before, after)
    assert all(
        not torch.equal(a, b) for a, b in zip(head_before, module.head.parameters(), strict=True)
    )
    optimizer = trainer.optimizers[0]
    assert type(optimizer) is cls
    if momentum is not None:
        assert optimizer.defaults["momentum"] == momentum
        assert optimizer.defaults["nesterov"] == nesterov


def test_unknown_optimizer_or_scheduler_is_refused_with_a_suggestion():
    with pytest.raises(TlkitError, match=r"unknown optimizer 'adamm'.*did you mean: adam"):
        model(optimizer="adamm")
    with pytest.raises(TlkitError, match=r"unknown scheduler 'cosin'.*did you mean: cosine"):
        model(scheduler="cosin")


# --- per-group learning rates -----------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_param_groups_name_every_layer_group_and_hold_every_parameter_once(backbone):
    module = model(backbone=backbone, strategy="full", lr=0.02)
    groups = module.param_groups()
    names = [g["name"] for g in groups]
    bases = [n.removesuffix("/no_decay") for n in names]
    layer_names = [g.name for g in module.groups]
    assert len(layer_names) >= 4
    assert list(dict.fromkeys(bases)) == [*layer_names, "head"]
    assert len(names) == len(set(names))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    expected = [*module.backbone.parameters(), *module.head.parameters()]
    assert set(ids) == {id(p) for p in expected}
    assert {g["lr"] for g in groups if g["name"].startswith("head")} == {0.02}
    for g in groups:
        if g["name"].endswith("/no_decay"):
            assert g["weight_decay"] == 0.0
            assert all(p.ndim <= 1 for p in g["params"])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_layer_decay_halves_the_lr_group_by_group(backbone):
    module = model(backbone=backbone, strategy="full", strategy_args={"layer_decay": 0.5})
    lrs = {g["name"]: g["lr"] for g in module.param_groups()}
    chain = [lrs[g.name] for g in module.groups] + [lrs["head"]]
    assert chain[-1] == 1e-3
    for lower, upper in itertools.pairwise(chain):
        assert lower == pytest.approx(upper / 2)
    assert all(lrs[f"{g.name}/no_decay"] == lrs[g.name] for g in module.groups)


SCHEDULER_SETTINGS = {
    "cosine": {"scheduler": "cosine"},
    "exponential": {"scheduler": "exponential", "gamma": 0.5},
    "step": {"scheduler": "step", "gamma": 0.1, "step_epochs": 1},
    "warmup": {"scheduler": "cosine", "warmup_epochs": 1},
}


@pytest.mark.parametrize("case", SCHEDULER_SETTINGS)
def test_every_group_follows_the_schedule_each_step(case):
    settings = SCHEDULER_SETTINGS[case]
    epochs, batches = 3, 3
    torch.manual_seed(0)
    module = model(strategy="full", strategy_args={"layer_decay": 0.5}, lr=0.01, **settings)
    base = {g["name"]: g["lr"] for g in module.param_groups()}
    record = RecordLR()
    fit(module, loader(toy_data()), epochs=epochs, limit_train_batches=batches, callbacks=[record])
    total = epochs * batches
    assert len(record.steps) == total
    schedule = make_schedule(
        settings["scheduler"],
        steps_per_epoch=batches,
        warmup_epochs=settings.get("warmup_epochs", 0.0),
        gamma=settings.get("gamma"),
        step_epochs=settings.get("step_epochs", 10),
    )
    for step, lrs in enumerate(record.steps):
        assert lrs.keys() == base.keys()
        for name, lr in lrs.items():
            assert lr == pytest.approx(base[name] * schedule(step, total)), (step, name)
    head = [lrs["head"] / 0.01 for lrs in record.steps]
    if case == "exponential":
        assert head[::batches] == pytest.approx([1.0, 0.5, 0.25])
    elif case == "step":
        assert head[::batches] == pytest.approx([1.0, 0.1, 0.01])
    elif case == "warmup":
        assert head[:batches] == pytest.approx([0.25, 0.5, 0.75])
        assert head[batches] == 1.0
    else:
        assert head[0] == 1.0
        assert all(a > b for a, b in itertools.pairwise(head))


def test_exponential_decays_per_epoch_even_when_max_steps_cuts_the_run():
    torch.manual_seed(0)
    module = model(scheduler="exponential", gamma=0.5)
    record = RecordLR()
    data = loader(toy_data())
    fit(module, data, epochs=4, max_steps=7, limit_train_batches=3, callbacks=[record])
    head = [lrs["head"] / 1e-3 for lrs in record.steps]
    assert head == pytest.approx([0.5 ** (i / 3) for i in range(7)])


# --- strategies: linear probe and BatchNorm ---------------------------------------------------
def _backbone_modes(module: TransferModule, seen: list[bool]) -> None:
    def hook(backbone, args) -> None:
        if module.training:
            seen.append(any(m.training for m in backbone.modules()))

    module.backbone.register_forward_pre_hook(hook)


def test_linear_probe_keeps_backbone_and_batchnorm_statistics_bit_identical():
    torch.manual_seed(0)
    module = model(backbone="test_efficientnet", strategy="linear_probe")
    state = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    assert any(k.endswith("running_mean") for k in state)
    head = [p.detach().clone() for p in module.head.parameters()]
    train_modes: list[bool] = []
    _backbone_modes(module, train_modes)
    fit(module, loader(toy_data(), shuffle=True), epochs=2)
    assert train_modes and not any(train_modes)
    after = module.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert all(not torch.equal(a, b) for a, b in zip(head, module.head.parameters(), strict=True))


def test_bn_train_policy_lets_frozen_statistics_update():
    torch.manual_seed(0)
    module = model(backbone="test_efficientnet", strategy_args={"bn": "train"})
    state = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    fit(module, loader(toy_data()), epochs=1, limit_train_batches=1)
    after = module.backbone.state_dict()
    stats = [k for k in state if k.endswith("running_mean")]
    assert any(not torch.equal(after[k], state[k]) for k in stats)
    assert all(torch.equal(p, state[n]) for n, p in module.backbone.named_parameters())


# --- head and loss -----------------------------------------------------------------------------
def test_label_smoothing_changes_the_loss():
    data = toy_data()
    losses = {}
    for smoothing in (0.0, 0.3):
        torch.manual_seed(0)
        module = model(label_smoothing=smoothing)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
        losses[smoothing] = trainer.validate(module, loader(data), verbose=False)[0]["val_loss"]
        images, labels = data.tensors
        with torch.no_grad():
            logits = module.eval()(images)
        expected = F.cross_entropy(logits, labels, label_smoothing=smoothing).item()
        assert losses[smoothing] == pytest.approx(expected, rel=1e-4)
    assert abs(losses[0.0] - losses[0.3]) > 1e-3


def _long_tailed(make_shapes, cache: Path):
    """A shapes folder of 12 circles, 12 squares and 3 triangles, as a datamodule."""
    from tlkit.data import TransferDataModule

    folder = make_shapes(per_class=12)
    for extra in sorted((folder / "triangle").glob("*.png"))[3:]:
        extra.unlink()
    return TransferDataModule(str(folder), image_size=32, augment="none", cache_dir=str(cache))


@pytest.mark.parametrize("treatment", ["auto", "balanced", "none"])
def test_the_loss_treats_long_tailed_classes_as_asked(make_shapes, tmp_path, treatment):
    from sklearn.utils.class_weight import compute_class_weight

    data = _long_tailed(make_shapes, tmp_path)
    module = model(class_balance=treatment)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    labels = torch.as_tensor(data.check_images()["train"].labels)
    used = module.class_balance
    logits = torch.randn(len(labels), 3, dtype=torch.float64)
    counts = torch.bincount(labels, minlength=3).double()
    if treatment == "auto":  # 12 against 3 (or fewer, once val is held out): imbalanced
        assert used.balance.name == "logit-adjusted" and used.weight is None
        assert torch.allclose(used.log_prior.exp(), counts / counts.sum())
        expected = F.cross_entropy(logits + (counts / counts.sum()).log(), labels)
    elif treatment == "balanced":  # scikit-learn's class_weight="balanced" as the oracle
        oracle = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
        assert used.weight.numpy() == pytest.approx(oracle)
        expected = F.cross_entropy(logits, labels, weight=torch.as_tensor(oracle))
    else:
        assert used.weight is None and used.log_prior is None
        expected = F.cross_entropy(logits, labels)
    assert module._loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_auto_leaves_the_loss_alone_on_equal_classes_and_refuses_unknown_treatments(make_shapes):
    from tlkit.balance import training_balance

    assert training_balance("auto", [0, 0, 1, 1, 2, 2], 3).balance.name == "none"
    with pytest.raises(TlkitError, match="class_balance must be one of"):
        model(class_balance="reweighted")
    with pytest.raises(TlkitError, match="needs the training labels"):
        training_balance("balanced", None, 3)


def test_head_hidden_layer_and_dropout():
    module = model(head_hidden=32, dropout=0.5)
    linears = [m for m in module.head if isinstance(m, nn.Linear)]
    width = module.backbone.num_features
    assert [(m.in_features, m.out_features) for m in linears] == [(width, 32), (32, 3)]
    assert [m.p for m in module.head if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    features = torch.randn(16, width)
    module.train()
    assert not torch.equal(module(features), module(features))
    module.eval()
    assert torch.equal(module(features), module(features))
    plain = model()
    assert [type(m) for m in plain.head] == [nn.Dropout, nn.Linear]
    assert plain.head[-1].in_features == width


def test_forward_accepts_images_and_features():
    module = model().eval()
    images = toy_data(n=5).tensors[0]
    with torch.no_grad():
        logits = module(images)
        features = module.encode(images)
        assert features.shape == (5, module.backbone.num_features)
        assert torch.allclose(module(features), logits, atol=1e-6)
    assert logits.shape == (5, 3)


# --- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_reloads_in_one_call_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    names = ["circle", "square", "triangle"]
    module = model(strategy="full", class_names=names, lr=0.01)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="model")
    fit(module, loader(toy_data()), epochs=1, enable_checkpointing=True, callbacks=[checkpoint])
    path = tmp_path / "model.ckpt"
    assert path.is_file()
    reloaded = TransferModule.load_from_checkpoint(path)
    assert reloaded.hparams.class_names == names
    images = toy_data(n=6, seed=1).tensors[0]
    with torch.no_grad():
        expected = module.eval()(images)
        got = reloaded.eval()(images)
    assert torch.equal(got, expected)
    fresh = model(strategy="full").eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(images), expected)


class _TrainBatches(Callback):
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.lbfgs_state: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.shapes.append(tuple(batch[0].shape))
        self.lbfgs_state.append(len(trainer.optimizers[0].state))


def test_lbfgs_trains_on_one_batch_of_cached_features_handed_to_the_data(make_shapes, tmp_path):
    from tlkit.data import TransferDataModule

    data = TransferDataModule(
        str(make_shapes(per_class=6)), image_size=32, augment="none", cache_dir=str(tmp_path)
    )
    module = model(optimizer="lbfgs", lbfgs_max_iter=5, l2_range=(1.0, 0.01))
    seen = _TrainBatches()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[seen],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    width = module.backbone.num_features
    assert seen.shapes == [(len(data.datasets["train"]), width)] * 3  # one batch of features
    assert seen.lbfgs_state == [0, 0, 0]  # each epoch solves its L2 strength afresh
    assert float(trainer.logged_metrics["l2"]) == pytest.approx(0.01)
    assert [module.l2_strength(e) for e in range(3)] == pytest.approx([1.0, 0.1, 0.01])


def test_fractional_max_pooling_draws_its_grid_in_training_only():
    from tlkit.heads import FractionalMaxPool

    pool = FractionalMaxPool()
    maps = torch.randn(2, 4, 5, 5)
    assert pool(maps).shape == (2, 4, 3, 3)  # each side times 1/sqrt(2), rounded down
    assert not torch.equal(pool(maps), pool(maps)), "a fresh pseudo-random grid per call"
    pool.eval()
    assert torch.equal(pool(maps), pool(maps))
    one = torch.randn(2, 4, 1, 1)  # a small input's last map: nothing to pool
    assert torch.equal(pool(one), one)


def test_pool_fmp_trains_and_reloads_as_the_same_model(tmp_path):
    L.seed_everything(0, verbose=False)
    data = toy_data()
    module = model(strategy="full", pool="fmp", lr=3e-3, optimizer="adamw",
                   backbone="test_efficientnet")  # fmt: skip
    images = torch.nn.functional.interpolate(data.tensors[0], size=160)  # a 5x5 last map
    big = TensorDataset(images, data.tensors[1])
    before = eval_loss(module, big)
    fit(module, loader(big, shuffle=True), epochs=3)
    assert eval_loss(module, big) < before
    path = tmp_path / "fmp.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    from tlkit.inference import load_checkpoint

    loaded = load_checkpoint(path).model
    assert isinstance(loaded.backbone.global_pool[0], type(module.backbone.global_pool[0]))
    module.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images[:4]), module(images[:4]), atol=1e-5)


def test_pool_fmp_refuses_stage_features_and_unknown_pools():
    with pytest.raises(TlkitError, match="`pool=fmp` with the top features"):
        model(strategy="probe_stage", pool="fmp")
    with pytest.raises(TlkitError, match="unknown pool 'max'"):
        model(pool="max")


def test_a_fmp_model_refuses_a_timm_export_that_would_drop_its_pooling():
    from tlkit.export import timm_state_dict
    from tlkit.inference import LoadedModel

    loaded = LoadedModel(model(pool="fmp", backbone="test_efficientnet"), None, ["a"] * 3, 32, {})
    with pytest.raises(TlkitError, match="fractional max pooling"):
        timm_state_dict(loaded)
