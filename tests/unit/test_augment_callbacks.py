"""Tests for augmentation schedules and previews, pipeline files, MixUp, flip TTA, DropConnect."""

from __future__ import annotations

import albumentations as A
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2
from helpers import StopAfter, quiet_trainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tlkit.callbacks import (
    AugmentationPreview,
    AugmentationSchedule,
    DropConnect,
    DropConnectLinear,
    FlipTTA,
    MixUp,
    load_pipeline,
    mix_batch,
    save_pipeline,
)
from tlkit.errors import TlkitError
from tlkit.transforms import ScheduledPipeline

pytestmark = pytest.mark.usefixtures("one_thread")


trainer = quiet_trainer


# --- pipeline files --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_pipeline_files_round_trip(tmp_path, suffix):
    pipeline = A.Compose([A.HorizontalFlip(p=1.0), A.ToGray(p=1.0), ToTensorV2()])
    path = tmp_path / f"aug{suffix}"
    save_pipeline(pipeline, path)
    loaded = load_pipeline(path)
    image = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    assert torch.equal(loaded(image=image)["image"], pipeline(image=image)["image"])


def test_pipeline_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(TlkitError, match="not found"):
        load_pipeline(tmp_path / "missing.yaml")
    with pytest.raises(TlkitError, match=r"\.yaml, \.yml or \.json"):
        load_pipeline(tmp_path / "aug.txt")
    broken = tmp_path / "broken.yaml"
    broken.write_text("transform: {__class_fullname__: NoSuchTransform}\n")
    with pytest.raises(TlkitError, match=r"A\.save"):
        load_pipeline(broken)


# --- AugmentationSchedule on a plain dataset, through a persistent worker --------------------


class Blank(Dataset):
    """Black 8x8 images through an albumentations-style ``transform(image=...)``."""

    def __init__(self) -> None:
        self.transform = A.Compose([ToTensorV2()])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return self.transform(image=np.zeros((8, 8, 3), np.uint8))["image"], 0


class Brightness(L.LightningModule):
    """Records the mean pixel value of the batches of each epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.seen: dict[int, float] = {}

    def training_step(self, batch, batch_idx):
        self.seen[self.current_epoch] = float(batch[0].float().mean())
        return self.layer(batch[0].float().mean().view(1, 1)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_schedule_switches_pipelines_in_persistent_workers_and_resumes(tmp_path):
    invert = A.Compose([A.InvertImg(p=1.0), ToTensorV2()])
    unit = A.Compose([A.InvertImg(p=1.0), A.ToFloat(max_value=255), ToTensorV2()])
    schedule = {1: invert, 3: unit, -1: invert}  # epoch 0: the dataset's own pipeline
    data = Blank()
    loader = DataLoader(data, batch_size=4, num_workers=1, persistent_workers=True)
    with pytest.raises(TlkitError, match="attach"):
        trainer(AugmentationSchedule(schedule), max_epochs=5).fit(Brightness(), loader)

    model, scheduled = Brightness(), AugmentationSchedule(schedule)
    scheduled.attach(data)
    trainer(scheduled, max_epochs=5).fit(model, loader)
    assert model.seen == {0: 0.0, 1: 255.0, 2: 255.0, 3: 1.0, 4: 255.0}
    assert data.transform.__class__ is A.Compose  # put back after the fit

    stopped = trainer(AugmentationSchedule(schedule), StopAfter(2), max_epochs=5)
    stopped.fit(Brightness(), DataLoader(Blank(), batch_size=4))
    stopped.save_checkpoint(tmp_path / "mid.ckpt")
    resumed = Brightness()
    trainer(AugmentationSchedule(schedule), max_epochs=5).fit(
        resumed, DataLoader(Blank(), batch_size=4), ckpt_path=str(tmp_path / "mid.ckpt")
    )
    assert resumed.seen == {3: 1.0, 4: 255.0}


class Record(Brightness):
    """Records the mean of every batch."""

    def training_step(self, batch, batch_idx):
        self.seen[batch_idx] = float(batch[0].float().mean())
        return super().training_step(batch, batch_idx)


def test_workers_draw_different_augmentations_repeatably():
    darker = A.RandomBrightnessContrast(brightness_limit=(-0.5, -0.1), contrast_limit=0, p=1)
    jitter = A.Compose([A.InvertImg(p=1.0), darker, ToTensorV2()])
    runs = []
    for _ in range(2):
        L.seed_everything(7, verbose=False)
        data, model, scheduled = Blank(), Record(), AugmentationSchedule({0: jitter})
        scheduled.attach(data)
        loader = DataLoader(data, batch_size=1, num_workers=2)
        trainer(scheduled, max_epochs=1).fit(model, loader)
        runs.append([model.seen[i] for i in range(4)])
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 4  # batches 0 and 1 come from different workers


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        ({}, "non-empty"),
        ({0: "hevy"}, "heavy"),
        ({0: 3}, "epoch 0"),
        ({"x": "light"}, "not an epoch"),
    ],
)
def test_schedule_arguments_are_checked(schedule, match):
    with pytest.raises(TlkitError, match=match):
        AugmentationSchedule(schedule)


def test_schedule_epochs_from_the_end_must_not_collide():
    with pytest.raises(TlkitError, match="used twice"):
        trainer(AugmentationSchedule({0: "light", 2: "none", -2: "heavy"}), max_epochs=4).fit(
            Brightness(), DataLoader(Blank(), batch_size=4)
        )


# --- presets and the preview on the demo data ------------------------------------------------


class Probe(L.LightningModule):
    """A linear model over images: enough to drive a TransferDataModule."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.LazyLinear(10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_preset_schedule_and_preview_on_demo_images(tmp_path, monkeypatch):
    from tlkit import TransferDataModule

    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path))
    data = TransferDataModule("demo", backbone="test_resnet", image_size=32, augment="none")
    preview = AugmentationPreview(n=12, path=str(tmp_path / "preview.png"))
    schedule = AugmentationSchedule({0: "heavy", -1: "none"})
    run = trainer(preview, schedule, max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    run.fit(Probe(), datamodule=data)

    image = Image.open(preview.written)
    assert image.size == (4 * 100 + 4, 3 * 114 + 4)
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20  # garments on black, not a blank or saturated sheet

    dataset = data.datasets["train"]
    assert not isinstance(dataset.transform, type(schedule._transform))
    first = dataset[0][0]
    assert torch.equal(first, dataset[0][0])  # augment="none" pipeline is back

    state = torch.get_rng_state()
    preview.render(run)
    assert torch.equal(state, torch.get_rng_state())


def test_preview_arguments_are_checked(tmp_path):
    with pytest.raises(TlkitError, match="n must"):
        AugmentationPreview(n=0)
    with pytest.raises(TlkitError, match=r"\.png"):
        AugmentationPreview(path=str(tmp_path / "grid.jpg"))
    with pytest.raises(TlkitError, match="mean and std"):
        AugmentationPreview(mean=(0.5, 0.5, 0.5))


# --- MixUp / CutMix --------------------------------------------------------------------------


def test_mixup_blends_inputs_and_targets_with_the_same_weight():
    torch.manual_seed(0)
    n = 6
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone()
    mixed, targets = mix_batch(x, torch.arange(n), n, mixup_alpha=0.4)
    assert torch.allclose(targets.sum(1), torch.ones(n))
    expected = (targets * torch.arange(n, dtype=torch.float32)).sum(1)
    assert torch.allclose(mixed[:, 0, 0, 0], expected, atol=1e-5)


def test_cutmix_target_weight_is_the_pasted_area():
    torch.manual_seed(3)
    n = 5
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 10, 10).clone()
    for _ in range(5):
        mixed, targets = mix_batch(x, torch.arange(n), n, mixup_alpha=0.0, cutmix_alpha=1.0)
        for i in range(n):
            own = (mixed[i] == i).float().mean()
            assert targets[i, i] == pytest.approx(float(own), abs=1e-6) or targets[i, i] == 1
    with pytest.raises(TlkitError, match="CutMix needs images"):
        mix_batch(torch.zeros(4, 8), torch.arange(4), 4, mixup_alpha=0, cutmix_alpha=1.0)


class SoftTargets(L.LightningModule):
    """Records the targets its training step receives."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"num_classes": 3})
        self.layer = nn.Linear(4, 3)
        self.targets: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.targets[self.current_epoch] = y
        return F.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_mixup_callback_feeds_soft_targets_until_stop_epoch():
    x = torch.randn(8, 4)
    y = torch.arange(8) % 3
    model = SoftTargets()
    loader = DataLoader(list(zip(x, y, strict=True)), batch_size=8)
    trainer(MixUp(mixup_alpha=0.4, stop_epoch=-1), max_epochs=3).fit(model, loader)
    for epoch in (0, 1):
        soft = model.targets[epoch]
        assert soft.shape == (8, 3) and torch.allclose(soft.sum(1), torch.ones(8))
    assert torch.equal(model.targets[2], y)


def test_mix_batch_repeats_under_torch_seed_and_leaves_inputs_alone():
    x = torch.rand(7, 3, 8, 8)
    kept = x.clone()
    draws = []
    for _ in range(2):
        torch.manual_seed(5)
        draws.append(mix_batch(x, torch.arange(7) % 3, 3, mixup_alpha=0.4, cutmix_alpha=1.0))
    assert torch.equal(x, kept)
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], x)  # odd batch of 7: every sample has a partner
    unmixed, onehot = mix_batch(x, torch.arange(7) % 3, 3, mixup_alpha=0, label_smoothing=0.3)
    assert torch.equal(unmixed, x) and torch.allclose(onehot.max(1).values, torch.full((7,), 0.8))


def test_mixup_callback_takes_num_classes_from_argument_or_hparams():
    x, y = torch.randn(8, 4), torch.arange(8) % 3
    loader = DataLoader(list(zip(x, y, strict=True)), batch_size=8)
    bare = Headed()
    with pytest.raises(TlkitError, match="num_classes=N"):
        trainer(MixUp(), max_epochs=1).fit(bare, loader)
    recorded = SoftTargets()  # hparams say 3 classes: the argument wins
    recorded.layer = nn.Linear(4, 5)
    trainer(MixUp(num_classes=5), max_epochs=1).fit(recorded, loader)
    assert recorded.targets[0].shape == (8, 5)


def test_mixup_arguments_are_checked():
    with pytest.raises(TlkitError, match="both 0"):
        MixUp(mixup_alpha=0.0)
    with pytest.raises(TlkitError, match="prob"):
        MixUp(prob=1.5)
    with pytest.raises(TlkitError, match="label_smoothing"):
        MixUp(label_smoothing=1.0)


# --- flip TTA and DropConnect ----------------------------------------------------------------


class LeftRight(L.LightningModule):
    """Logits that depend on which half of the image is bright: flips change the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, x):
        left, right = x[..., : x.shape[-1] // 2].mean((1, 2, 3)), x[..., x.shape[-1] // 2 :]
        return self.scale * torch.stack([left, right.mean((1, 2, 3))], dim=1)

    def predict_step(self, batch, batch_idx):
        return self(batch[0]).softmax(-1)


def test_flip_tta_averages_the_mirror_image_during_predict_only():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 4, 4)
    model = LeftRight()
    (predicted,) = trainer(FlipTTA()).predict(model, DataLoader([(v, 0) for v in x], batch_size=6))
    plain = model(x).softmax(-1)
    flipped = model(x.flip(-1)).softmax(-1)
    assert torch.allclose(predicted, (plain + flipped) / 2, atol=1e-6)
    assert not torch.allclose(predicted, plain, atol=1e-3)
    assert "forward" not in vars(model)
    with pytest.raises(TlkitError, match="FlipTTA stage"):
        FlipTTA(stages=["tets"])


class Headed(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.body(x))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_dropconnect_drops_head_weights_in_training_only():
    model = Headed()
    weight = model.head[1].weight
    keys = set(model.state_dict())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    trainer(DropConnect(p=0.5), max_epochs=1).fit(
        model, DataLoader(list(zip(x, y, strict=True)), 16)
    )
    layer = model.head[1]
    assert isinstance(layer, DropConnectLinear) and layer.weight is weight
    assert set(model.state_dict()) == keys
    assert not isinstance(model.body, DropConnectLinear)
    features = torch.randn(32, 8)
    layer.eval()
    assert torch.allclose(layer(features), F.linear(features, layer.weight, layer.bias))
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(features), F.linear(features, layer.weight, layer.bias))
    with pytest.raises(TlkitError, match="no submodule 'neck'"):
        DropConnect(module="neck").setup(None, model, "fit")
    with pytest.raises(TlkitError, match="p must"):
        DropConnect(p=1.0)


class Sums(L.LightningModule):
    """Records, per epoch, the sum of every training batch in order, and the value range."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[float]] = {}
        self.ranges: dict[int, tuple[float, float]] = {}

    def training_step(self, batch, batch_idx):
        x, epoch = batch[0], self.current_epoch
        self.seen.setdefault(epoch, []).append(float(x.double().sum()))
        low, high = self.ranges.get(epoch, (float("inf"), float("-inf")))
        self.ranges[epoch] = (min(low, float(x.min())), max(high, float(x.max())))
        return self.weight * x.float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_datamodule_schedule_reaches_two_workers_and_resumes_the_same_pipeline(tmp_path):
    from tlkit import TransferDataModule

    unit = A.Compose([A.Resize(32, 32), A.ToFloat(max_value=255), ToTensorV2()])
    inverted = A.Compose([A.Resize(32, 32), A.InvertImg(p=1.0), *unit.transforms[1:]])
    schedule = {1: unit, 2: "heavy", 3: inverted}

    def fit(model, *callbacks, ckpt_path=None):
        data = TransferDataModule(
            "demo",
            backbone="test_resnet",
            image_size=32,
            augment="none",
            batch_size=16,
            num_workers=2,
            cache_features=False,
        )
        run = trainer(
            AugmentationSchedule(schedule),
            *callbacks,
            max_epochs=4,
            limit_train_batches=2,
            limit_val_batches=0,
        )
        run.fit(model, datamodule=data, ckpt_path=ckpt_path)
        return run, data

    whole = Sums()
    _, data = fit(whole)
    assert whole.ranges[0][0] < 0 and whole.ranges[2][0] < 0  # normalised: own, heavy
    for epoch in (1, 3):  # unit range: the scheduled pipelines reached both workers
        assert 0 <= whole.ranges[epoch][0] < whole.ranges[epoch][1] <= 1
    train = data.datasets["train"]
    assert train.schedule is None  # the datamodule's pipeline is back
    train.set_schedule(ScheduledPipeline([(1, unit), (3, inverted)]))
    assert torch.allclose(train[(1, 0)][0], 1 - train[(3, 0)][0])

    stopped = Sums()
    run, _ = fit(stopped, StopAfter(1))
    run.save_checkpoint(tmp_path / "mid.ckpt")
    assert stopped.seen == {0: whole.seen[0], 1: whole.seen[1]}
    resumed = Sums()
    fit(resumed, ckpt_path=str(tmp_path / "mid.ckpt"))
    assert resumed.seen == {2: whole.seen[2], 3: whole.seen[3]}  # heavy, seeded per image
