"""Fine-tune strategies on tiny timm models, trained with a real Lightning Trainer on CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from tlkit.errors import TlkitError
from tlkit.module import TransferModule
from tlkit.recipes import recipe_path
from tlkit.strategies import STRATEGIES, create_strategy

NUM_CLASSES = 3
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same batches."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def _loader(n: int = 24, batch_size: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, SIZE, SIZE, generator=generator)
    labels = torch.arange(n) % NUM_CLASSES
    dataset = TensorDataset(images, labels)
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(n), num_workers=0)


def _module(strategy: str, backbone: str = "test_resnet", **kwargs) -> TransferModule:
    L.seed_everything(0, verbose=False)
    kwargs.setdefault("scheduler", "constant")
    kwargs.setdefault("lr", 0.01)
    return TransferModule(
        NUM_CLASSES,
        backbone=backbone,
        pretrained=False,
        strategy=strategy,
        strategy_args=kwargs.pop("strategy_args", None),
        **kwargs,
    )


def _trainer(epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=bool(kwargs.pop("checkpointing", False)),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
        **kwargs,
    )


def _fit(model: TransferModule, epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    trainer = _trainer(epochs, callbacks, **kwargs)
    trainer.fit(model, train_dataloaders=_loader())
    return trainer


def _backbone_state(model: TransferModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def _group_of_key(model: TransferModule) -> dict[str, int]:
    """Backbone state-dict key -> layer group, buffers going with their module's parameters."""
    owner = {name: g.index for g in model.groups for name in g.params}
    modules = {name.rsplit(".", 1)[0]: index for name, index in owner.items()}
    return {
        key: owner.get(key, modules.get(key.rsplit(".", 1)[0], -1))
        for key in model.backbone.state_dict()
    }


def _changed_groups(model, before: dict[str, torch.Tensor]) -> set[int]:
    after, group_of = model.backbone.state_dict(), _group_of_key(model)
    return {group_of[k] for k, v in before.items() if not torch.equal(v, after[k])}


class ModeRecorder(Callback):
    """Records, at every training batch, which backbone modules are in training mode."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.modes.append({n: m.training for n, m in pl_module.backbone.named_modules() if n})


# --- frozen parts stay bit-identical ---------------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "args", "trained"),
    [
        ("linear_probe", {}, set()),
        ("probe_stage", {"stage": -2}, set()),
        ("partial", {"k": 2}, {3, 4}),
    ],
)
def test_frozen_parts_never_change(strategy: str, args: dict, trained: set[int]) -> None:
    model = _module(strategy, strategy_args=args)
    before, head = _backbone_state(model), [p.detach().clone() for p in model.head.parameters()]
    assert any("running_mean" in k for k in before)
    recorder = ModeRecorder()
    _fit(model, 2, [recorder])

    assert _changed_groups(model, before) == trained
    assert not any(torch.equal(a, b) for a, b in zip(head, model.head.parameters(), strict=True))
    frozen = {g.index for g in model.groups} - trained
    group_of = _group_of_key(model)
    frozen_modules = {k.rsplit(".", 1)[0] for k, g in group_of.items() if g in frozen}
    assert recorder.modes
    for modes in recorder.modes:
        assert all(not modes[name] for name in frozen_modules), "frozen modules in eval mode"
        trainable = {k.rsplit(".", 1)[0] for k, g in group_of.items() if g in trained}
        assert all(modes[name] for name in trainable), "trained modules in train mode"


@pytest.mark.parametrize("stage", [1, -2])
def test_probe_stage_reads_its_stage_and_never_runs_the_layers_above(stage: int) -> None:
    model = _module("probe_stage", strategy_args={"stage": stage})
    info = model.backbone.feature_info
    assert model.head[-1].in_features == info[stage]["num_chs"]
    calls = {"stage": 0, "last": 0}
    stage_module = model.backbone.get_submodule(info[stage]["module"])
    stage_module.register_forward_hook(lambda *_: calls.__setitem__("stage", calls["stage"] + 1))
    model.backbone.layer4.register_forward_hook(
        lambda *_: calls.__setitem__("last", calls["last"] + 1)
    )
    _fit(model, 1)
    assert calls["stage"] == 3 + 3  # one per batch, after one pass for the head's statistics
    assert calls["last"] == 0


def test_a_grid_probe_reads_its_stage_in_cells_and_the_top_pooled() -> None:
    model = _module("probe_stage", strategy_args={"stage": ["top", 1], "grid": 2}).eval()
    backbone, channels = model.backbone, model.backbone.feature_info[1]["num_chs"]
    assert model.head[-1].in_features == backbone.num_features + 4 * channels
    images = next(iter(_loader()))[0]
    with torch.no_grad():
        features = model.encode(images)
        stage_map = backbone.forward_intermediates(images, indices=[1], intermediates_only=True)
        top = backbone(images)
    stage_map = stage_map[0]
    half = stage_map.shape[-1] // 2
    assert half >= 2
    torch.testing.assert_close(features[:, : backbone.num_features], top)
    cells = features[:, backbone.num_features :].reshape(len(images), channels, 2, 2)
    # row 0, column 1: the mean of the map's top-right quarter
    torch.testing.assert_close(cells[..., 0, 1], stage_map[..., :half, half:].mean(dim=(2, 3)))
    torch.testing.assert_close(cells.mean(dim=(2, 3)), stage_map.mean(dim=(2, 3)))


def test_a_grid_per_stage_pools_each_stage_to_its_own_cells() -> None:
    model = _module("probe_stage", strategy_args={"stage": [0, 1], "grid": [4, 2]}).eval()
    backbone, info = model.backbone, model.backbone.feature_info
    assert model.strategy.grid == (4, 2)
    assert model.head[-1].in_features == 16 * info[0]["num_chs"] + 4 * info[1]["num_chs"]
    images = next(iter(_loader()))[0]
    with torch.no_grad():
        features = model.encode(images)
        maps = backbone.forward_intermediates(images, indices=[0, 1], intermediates_only=True)
    pool = torch.nn.functional.adaptive_avg_pool2d
    expected = torch.cat([pool(maps[0], 4).flatten(1), pool(maps[1], 2).flatten(1)], dim=1)
    torch.testing.assert_close(features, expected)
    # Every entry 1 is the plain pooled probe, cache key and all.
    plain = _module("probe_stage", strategy_args={"stage": [0, 1], "grid": [1, 1]})
    assert plain.strategy.grid == 1 and plain.strategy.reads == "(0, 1)"


def test_the_spatial_readout_pairs_the_probe_s_stage_with_the_one_before() -> None:
    from tlkit.readout import spatial_readout

    names = ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert spatial_readout(3, names) == {
        "name": "blocks.2@4x4+blocks.4@2x2", "stage": [2, 3], "grid": [4, 2]
    }  # fmt: skip
    assert spatial_readout(-2, names)["stage"] == [2, 3]
    joined = spatial_readout(["top", 3], names)
    assert joined["stage"] == ["top", 2, 3] and joined["grid"] == [1, 4, 2]
    assert joined["name"] == "top+blocks.2@4x4+blocks.4@2x2"
    assert spatial_readout(None, names) is None  # the top alone: no map
    assert spatial_readout(0, names) is None  # no stage before the first


def test_probe_stage_out_of_range_is_a_user_error() -> None:
    with pytest.raises(TlkitError, match="stage 7 out of range"):
        _module("probe_stage", strategy_args={"stage": 7})


def _early_stage_features(width: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled activations like an early stage's: a large offset shared by every image, and the
    class signal a thousandth of it, spread over all channels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    means = torch.randn(NUM_CLASSES, width, generator=torch.Generator().manual_seed(99))
    noise = torch.randn(n, width, generator=generator)
    return 1.0 + 1e-3 * (means[labels] + 0.7 * noise), labels


def _probe_on_features(standardize: bool, train, test) -> float:
    """A probe_stage head fitted with the small-different recipe's optimizer settings (20 epochs
    of batches of 32) on cached features; its test accuracy."""
    recipe = yaml.safe_load(recipe_path("small-different").read_text())["model"]
    settings = ("optimizer", "lr", "weight_decay", "scheduler", "warmup_epochs")
    model = _module(
        "probe_stage", strategy_args={"stage": 1, "standardize": standardize},
        **{k: recipe[k] for k in settings},
    )  # fmt: skip
    loader = DataLoader(TensorDataset(*train), batch_size=32, sampler=EpochSampler(len(train[1])))
    _trainer(20).fit(model, train_dataloaders=loader)
    model.eval()
    with torch.no_grad():
        return float((model(test[0]).argmax(1) == test[1]).float().mean())


def test_probe_stage_head_trains_as_well_as_the_exact_probe_advise_scores() -> None:
    # advise picks a stage by a ridge probe on standardised features; the head that then trains
    # on that stage must see the same scale, or a stage that advise rates high underfits.
    from tlkit.probe import cv_path

    width = _module("probe_stage", strategy_args={"stage": 1}).head[-1].in_features
    train, test = _early_stage_features(width, 60, 0), _early_stage_features(width, 300, 1)
    both = torch.cat([train[0], test[0]]), torch.cat([train[1], test[1]])
    split = [(torch.arange(60).numpy(), torch.arange(60, 360).numpy())]
    ridge = float(cv_path(both[0], both[1].numpy(), split).folds()[0])
    assert ridge > 0.8
    assert _probe_on_features(True, train, test) >= ridge - 0.1
    assert _probe_on_features(False, train, test) < 0.6  # raw features: the head barely moves


def test_probe_stage_head_standardises_with_training_statistics() -> None:
    model = _module("probe_stage", strategy_args={"stage": -2})
    layer = model.head.standardizer
    assert layer is not None and not bool(layer.fitted)
    _fit(model, 1)
    assert bool(layer.fitted)
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.encode(x) for x, _ in _loader()]).double()
    torch.testing.assert_close(layer.mean, features.mean(0).float(), rtol=1e-4, atol=1e-5)
    std = features.std(0, unbiased=False).float()
    std = torch.where(std < 1e-6 * std.max(), torch.ones_like(std), std)
    torch.testing.assert_close(layer.std, std, rtol=1e-4, atol=1e-5)
    # The statistics are fixed once: a second fit (a resumed run) keeps them.
    mean = layer.mean.clone()
    _fit(model, 1)
    assert torch.equal(layer.mean, mean)
    assert _module("linear_probe").head.standardizer is None
    assert _module("probe_stage", strategy_args={"standardize": False}).head.standardizer is None


def test_a_probe_stage_head_saved_without_standardisation_still_loads() -> None:
    old = _module("probe_stage", strategy_args={"stage": 1, "standardize": False})
    new = _module("probe_stage", strategy_args={"stage": 1})
    new.load_state_dict(old.state_dict())
    x = torch.randn(4, new.head[-1].in_features)
    torch.testing.assert_close(new.head(x), old.head(x))
    assert bool(new.head.standardizer.fitted)


# --- unfreezing schedules --------------------------------------------------------------------
class OptimizerRecorder(Callback):
    """Records the optimizer's identity and each epoch's backbone state."""

    def __init__(self) -> None:
        self.identity: list[tuple] = []
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        groups = optimizer.param_groups
        self.identity.append(
            (
                id(optimizer),
                tuple(id(g) for g in groups),
                tuple(id(g["params"]) for g in groups),
                tuple(id(p) for g in groups for p in g["params"]),
            )
        )
        self.states.append(_backbone_state(pl_module))

    def on_train_end(self, trainer, pl_module) -> None:
        self.states.append(_backbone_state(pl_module))


@pytest.mark.parametrize(
    ("strategy", "args", "epochs"),
    [("gradual", {"every": 1, "start": 1}, 4), ("lp_ft", {"probe_epochs": 2}, 3)],
)
def test_unfreezing_keeps_the_optimizer_and_follows_the_plan(
    strategy: str, args: dict, epochs: int
) -> None:
    model = _module(strategy, strategy_args=args)
    recorder = OptimizerRecorder()
    _fit(model, epochs, [recorder])

    assert len(set(recorder.identity)) == 1, "same optimizer, groups and param lists throughout"
    num_groups = len(model.groups)
    group_of = _group_of_key(model)
    for epoch in range(epochs):
        before, after = recorder.states[epoch], recorder.states[epoch + 1]
        changed = {group_of[k] for k in before if not torch.equal(before[k], after[k])}
        plan = model.strategy.trainable(epoch, num_groups)
        assert changed == {i for i, trains in enumerate(plan) if trains}, f"epoch {epoch}"


@pytest.mark.parametrize(
    ("strategy", "args", "epochs"),
    [("gradual", {"every": 1, "start": 1}, 4), ("lp_ft", {"probe_epochs": 2}, 4)],
)
def test_resume_from_the_middle_equals_an_uninterrupted_run(
    tmp_path, strategy: str, args: dict, epochs: int
) -> None:
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", every_n_epochs=1, save_top_k=-1
    )
    full = _module(strategy, strategy_args=args)
    _fit(full, epochs, [checkpoints], checkpointing=True)
    middle = tmp_path / f"epoch={epochs // 2 - 1}.ckpt"
    assert middle.is_file()

    resumed = _module(strategy, strategy_args=args)
    trainer = _trainer(epochs, checkpointing=False)
    trainer.fit(resumed, train_dataloaders=_loader(), ckpt_path=str(middle))
    assert trainer.current_epoch == epochs
    expected, got = full.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    interrupted = torch.load(middle, weights_only=False)["state_dict"]
    assert any(not torch.equal(interrupted[k], got[k]) for k in got), "resume trained further"


# --- priors ------------------------------------------------------------------------------------
def _distance_and_norm(prior: str, strength: float | None) -> tuple[float, float]:
    args = {"prior": prior, "layer_decay": 1.0}
    if strength is not None:
        args["prior_strength"] = strength
    model = _module("full", strategy_args=args, optimizer="sgd", lr=0.05, weight_decay=0.0)
    start = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    _fit(model, 2)
    weights = [(p, start[n]) for n, p in model.backbone.named_parameters() if p.ndim > 1]
    distance = sum((p - p0).pow(2).sum() for p, p0 in weights).sqrt().item()
    norm = sum(p.pow(2).sum() for p, _ in weights).sqrt().item()
    return distance, norm


def test_priors_pull_towards_their_centre() -> None:
    free_distance, free_norm = _distance_and_norm("none", None)
    l2sp_distance, _ = _distance_and_norm("pretrained", 10.0)
    _, decayed_norm = _distance_and_norm("zero", 2.0)
    assert free_distance > 0
    assert l2sp_distance < 0.8 * free_distance
    assert decayed_norm < 0.95 * free_norm


@pytest.mark.parametrize(
    ("prior", "strength", "expected"),
    [("zero", None, 0.05), ("zero", 0.2, 0.2), ("none", None, 0.0), ("pretrained", 1.0, 0.0)],
)
def test_weight_decay_of_backbone_groups(prior, strength, expected) -> None:
    args = {"prior": prior, "prior_strength": strength}
    model = _module("full", strategy_args=args, weight_decay=0.05)
    groups = {g["name"]: g for g in model.param_groups()}
    backbone = [g for name, g in groups.items() if not name.startswith("head")]
    assert {g["weight_decay"] for g in backbone if not g["name"].endswith("/no_decay")} == {
        expected
    }
    assert {g["weight_decay"] for g in backbone if g["name"].endswith("/no_decay")} == {0.0}
    assert groups["head"]["weight_decay"] == 0.05


def test_l2sp_penalty_scales_with_strength() -> None:
    penalties = []
    for strength in (1.0, 3.0):
        model = _module("full", strategy_args={"prior": "pretrained", "prior_strength": strength})
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.add_(0.1)
        penalties.append(model.prior_penalty().item())
    assert penalties[0] > 0
    assert penalties[1] == pytest.approx(3 * penalties[0], rel=1e-5)


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("partail", {}, "did you mean: partial"),
        ("full", {"prior": "l2sp"}, "unknown prior"),
        ("full", {"prior_strength": -1.0}, "prior_strength must be >= 0"),
        ("full", {"prior_strength": "high"}, "must be a number"),
        ("full", {"bn": "frozen"}, "BatchNorm policy"),
        ("full", {"layer_decay": 1.5}, "layer_decay must be in"),
        ("full", {"layer_decay": 0.0}, "layer_decay must be in"),
        ("partial", {"k": -1}, "k must be >= 0"),
        ("partial", {"k": 1.5}, "must be an integer"),
        ("partial", {"kk": 1}, "did you mean: k"),
        ("gradual", {"every": 0}, "every must be >= 1"),
        ("gradual", {"start": -1}, "start must be >= 0"),
        ("lp_ft", {"probe_epochs": -2}, "probe_epochs must be >= 0"),
        ("probe_stage", {"stage": "top"}, "must be an integer"),
        ("probe_stage", {"grid": 0}, "grid must be >= 1"),
        ("probe_stage", {"stage": 1, "grid": [4, 2]}, "needs a stage list as long"),
        ("probe_stage", {"stage": [0, 1], "grid": [4]}, "needs a stage list as long"),
        ("probe_stage", {"stage": [0, 1], "grid": [4, 0]}, "grid must be >= 1"),
        ("full", {"grid": 2}, "full: grid 2 pools a stage's map; give one stage"),
    ],
)
def test_bad_strategy_settings_are_user_errors(name: str, args: dict, message: str) -> None:
    with pytest.raises(TlkitError, match=message):
        create_strategy(name, **args)


def test_every_strategy_describes_its_settings() -> None:
    for name in STRATEGIES:
        described = create_strategy(name).describe()
        assert described["name"] == name
        assert {"prior", "prior_strength", "bn", "layer_decay"} <= described.keys()
    assert create_strategy("partial", k=3).describe()["k"] == 3


# --- knobs -------------------------------------------------------------------------------------
def test_layer_decay_sets_the_learning_rate_of_each_group() -> None:
    model = _module("full", strategy_args={"layer_decay": 0.5}, lr=0.01)
    trainer = _fit(model, 1)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    n = len(model.groups)
    for group in model.groups:
        assert lrs[group.name] == pytest.approx(0.01 * 0.5 ** (n - group.index))
    assert lrs["head"] == pytest.approx(0.01)
    flat = _module("full", strategy_args={"layer_decay": 1.0}, lr=0.01)
    assert {g["lr"] for g in flat.param_groups()} == {0.01}


@pytest.mark.parametrize(
    ("strategy", "args", "expected"),
    [
        ("partial", {"k": 1}, [[0, 0, 0, 0, 1]] * 3),
        ("partial", {"k": 3}, [[0, 0, 1, 1, 1]] * 3),
        ("gradual", {}, [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]),
        ("gradual", {"start": 0}, [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]),
        ("gradual", {"every": 2}, [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]),
        ("gradual", {"start": 0, "min_group": 4}, [[0, 0, 0, 0, 1]] * 3),
        ("lp_ft", {"probe_epochs": 1}, [[0] * 5, [1] * 5, [1] * 5]),
        ("lp_ft", {"probe_epochs": 2}, [[0] * 5, [0] * 5, [1] * 5]),
        ("full", {}, [[1] * 5] * 3),
        ("linear_probe", {}, [[0] * 5] * 3),
    ],
)
def test_plans(strategy: str, args: dict, expected: list[list[int]]) -> None:
    plan = create_strategy(strategy, **args)
    assert [[int(t) for t in plan.trainable(epoch, 5)] for epoch in range(3)] == expected


@pytest.mark.parametrize(
    ("strategy", "bn", "moves"),
    [
        ("linear_probe", "frozen_eval", False),
        ("linear_probe", "train", True),
        ("full", "frozen_eval", True),
        ("full", "eval", False),
    ],
)
def test_batchnorm_policy(strategy: str, bn: str, moves: bool) -> None:
    model = _module(strategy, strategy_args={"bn": bn})
    before = _backbone_state(model)
    _fit(model, 1)
    after = model.backbone.state_dict()
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats
    assert any(not torch.equal(before[k], after[k]) for k in stats) == moves


def test_unfrozen_groups_return_to_training_mode() -> None:
    model = _module("gradual", strategy_args={"start": 1})
    recorder = ModeRecorder()
    _fit(model, 2, [recorder])
    top = model.backbone.layer4
    names = [n for n, m in model.backbone.named_modules() if m is top]
    assert recorder.modes[0][names[0]] is False
    assert recorder.modes[-1][names[0]] is True
    assert isinstance(top[0].bn1, nn.BatchNorm2d)


@pytest.mark.parametrize("grid", [1, 2])
@pytest.mark.parametrize("backbone", ["test_resnet", "test_efficientnet"])
def test_full_with_a_stage_fine_tunes_up_to_that_stage_only(backbone, grid, tmp_path):
    whole = _module("full", backbone)
    cut = _module("full", backbone, strategy_args={"stage": -2, "grid": grid})
    info = whole.backbone.feature_info
    assert cut.head[-1].in_features == grid * grid * info[-2]["num_chs"]
    assert sum(p.numel() for p in cut.backbone.parameters()) < sum(
        p.numel() for p in whole.backbone.parameters()
    )
    before = _backbone_state(cut)
    _fit(cut, 1)
    after = _backbone_state(cut)
    # every remaining layer trained: nothing above the stage is left to sit unused (DDP)
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    groups = {name.split(".")[0] for group in cut.groups for name in group.params}
    assert groups <= moved
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": cut.state_dict(), "hyper_parameters": dict(cut.hparams)}, path)
    from tlkit.inference import load_checkpoint

    loaded = load_checkpoint(path).model
    images = torch.randn(2, 3, SIZE, SIZE)
    cut.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(images), cut(images), atol=1e-6)


def test_full_with_advise_s_joined_probe_keeps_the_whole_network():
    joined = _module("full", "test_efficientnet", strategy_args={"stage": ["top", 1]})
    assert joined.strategy.feature_stage is None
    assert joined.head[-1].in_features == joined.backbone.num_features
    with pytest.raises(TlkitError, match="full: stage takes one stage index"):
        create_strategy("full", stage=[1, 2])
