"""Tests for tlkit.data.TransferDataModule: splits, shots, bad images and the feature cache."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer

from tlkit.data import TransferDataModule
from tlkit.data.features import FeatureExtractor
from tlkit.data.sources import FASHION_MNIST_CLASSES
from tlkit.errors import TlkitError
from tlkit.module import TransferModule

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings(r"ignore:Found \d+ module\(s\) in eval mode"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no"),
]


def _counts(split) -> list[int]:
    return [n for _, n in sorted(Counter(split.labels).items())]


def _files(split) -> set[str]:
    return {str(item) for item in split.items}


def test_demo_has_the_documented_splits():
    dm = TransferDataModule("demo")
    assert dm.describe() == {
        "data": "demo",
        "num_classes": 10,
        "num_train": 200,
        "num_val": 100,
        "num_test": 500,
        "train_class_counts": [20] * 10,
        "imbalance_ratio": 1.0,
        "image_size": 224,
    }
    assert dm.num_classes == 10
    assert dm.class_names == sorted(FASHION_MNIST_CLASSES)
    assert _counts(dm.source.train) == [20] * 10


def test_shots_draw_exactly_k_per_class_and_keep_eval_splits():
    dm = TransferDataModule("demo", shots=5)
    assert _counts(dm.source.train) == [5] * 10
    assert (len(dm.source.val), len(dm.source.test)) == (100, 500)
    again = TransferDataModule("demo", shots=5)
    assert _files(again.source.train) == _files(dm.source.train)
    with pytest.raises(TlkitError, match="`shots=21` needs 21 images per class"):
        _ = TransferDataModule("demo", shots=21).source


def test_flat_folder_is_split_stratified_into_train_val_test(make_shapes):
    folder = make_shapes(per_class=12)
    dm = TransferDataModule(str(folder), image_size=32)
    src = dm.source
    assert dm.class_names == ["circle", "square", "triangle"]
    assert (_counts(src.train), _counts(src.val), _counts(src.test)) == ([8] * 3, [2] * 3, [2] * 3)
    train, val, test = _files(src.train), _files(src.val), _files(src.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == {str(p) for p in folder.rglob("*.png")}
    shots = TransferDataModule(str(folder), shots=3).source
    assert _counts(shots.train) == [3] * 3
    assert _files(shots.train) <= train
    assert _files(shots.test) == test


def test_loaders_yield_images_of_the_requested_size(make_shapes):
    dm = TransferDataModule(str(make_shapes(per_class=4)), image_size=40, batch_size=5)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (5, 3, 40, 40)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64


def _break_one(folder: Path) -> Path:
    bad = folder / "circle" / "broken.png"
    bad.write_bytes(b"this is not a png file")
    return bad


def test_undecodable_images_are_skipped_with_a_warning(make_shapes):
    folder = make_shapes(per_class=12)
    _break_one(folder)
    dm = TransferDataModule(str(folder), image_size=32)
    assert sum(len(s) for s in dm.source.splits().values()) == 37
    with pytest.warns(UserWarning, match=r"skipping 1 undecodable image.*broken\.png"):
        dm.setup("fit")
    assert sum(len(d) for d in dm.datasets.values()) == 36
    for dataset in dm.datasets.values():
        for index in range(len(dataset)):
            assert dataset[index][0].shape == (3, 32, 32)


def test_strict_refuses_an_undecodable_image_by_name(make_shapes):
    folder = make_shapes(per_class=12)
    bad = _break_one(folder)
    dm = TransferDataModule(str(folder), image_size=32, strict=True)
    with pytest.raises(TlkitError, match=rf"undecodable image.*{bad.name}.*`strict=False` to skip"):
        dm.setup("fit")


def test_bad_settings_are_refused():
    with pytest.raises(TlkitError, match=r"unknown augmentation preset 'hevy'.*heavy"):
        TransferDataModule("demo", augment="hevy")
    with pytest.raises(TlkitError, match="batch size must be positive"):
        TransferDataModule("demo", batch_size=0)
    with pytest.raises(TlkitError, match="shots must be positive"):
        TransferDataModule("demo", shots=0)


def _fit(module: TransferModule, dm: TransferDataModule) -> L.Trainer:
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(module, datamodule=dm)
    return trainer


def test_frozen_backbone_trains_on_cached_features(make_shapes, cache_dir, capsys):
    folder = make_shapes(per_class=6)
    torch.manual_seed(0)
    module = TransferModule(3, backbone="test_efficientnet", pretrained=False)

    def datamodule(image_size: int = 32) -> TransferDataModule:
        return TransferDataModule(
            str(folder), backbone="test_efficientnet", image_size=image_size, augment="none"
        )

    dm = datamodule()
    trainer = _fit(module, dm)
    features, _ = next(iter(trainer.train_dataloader))
    assert features.ndim == 2
    assert features.shape[1] == module.backbone.num_features
    cached_val, _ = next(iter(trainer.val_dataloaders))
    val = dm.datasets["val"]
    images = torch.stack([val[i][0] for i in range(len(cached_val))])
    with torch.no_grad():
        assert torch.allclose(cached_val, module.eval().encode(images), atol=1e-5)
    first = set(cache_dir.rglob("*.safetensors"))
    assert len(first) == 2
    assert "reusing cached" not in capsys.readouterr().out

    _fit(module, datamodule())
    assert "reusing cached train features" in capsys.readouterr().out
    assert set(cache_dir.rglob("*.safetensors")) == first

    _fit(module, datamodule(image_size=48))
    assert "reusing cached" not in capsys.readouterr().out
    resized = set(cache_dir.rglob("*.safetensors"))
    assert len(resized - first) == 2

    make_shapes(per_class=6, seed=1)  # same file names, new pictures
    _fit(module, datamodule())
    assert "reusing cached" not in capsys.readouterr().out
    assert len(set(cache_dir.rglob("*.safetensors")) - resized) == 2


def test_no_feature_cache_when_the_backbone_can_change(make_shapes, cache_dir):
    folder = make_shapes(per_class=6)
    for settings in ({"strategy": "full"}, {"strategy_args": {"bn": "train"}}):
        module = TransferModule(3, backbone="test_efficientnet", pretrained=False, **settings)
        dm = TransferDataModule(
            str(folder), backbone="test_efficientnet", image_size=32, augment="none"
        )
        trainer = _fit(module, dm)
        images, _ = next(iter(trainer.train_dataloader))
        assert images.shape[1:] == (3, 32, 32), settings
    assert not list(cache_dir.rglob("*.safetensors"))


def test_augmented_views_are_cached_and_served_by_epoch(make_shapes, cache_dir):
    folder = make_shapes(per_class=6)
    torch.manual_seed(0)
    module = TransferModule(3, backbone="test_efficientnet", pretrained=False)
    dm = TransferDataModule(
        str(folder), backbone="test_efficientnet", image_size=32, augment="light", feature_views=2
    )
    trainer = _fit(module, dm)
    train = trainer.train_dataloader.dataset
    assert len(train) == len(dm.datasets["train"])
    view0, label0 = train[(0, 0)]
    view1, label1 = train[(1, 0)]
    assert view0.ndim == 1 and label0 == label1
    assert not torch.equal(view0, view1)  # two different augmentations of the same image
    assert torch.equal(train[(2, 0)][0], view0)  # epoch 2 serves view 0 again
    images = dm.datasets["train"]
    with torch.no_grad():
        expected = module.eval().encode(images[(1, 0)][0].unsqueeze(0))[0]
    assert torch.allclose(view1, expected, atol=1e-5)


def test_offered_features_are_served_only_where_the_settings_allow(make_shapes, tmp_path):
    folder = str(make_shapes(per_class=4))
    extractor = FeatureExtractor(lambda images: images.mean(dim=(2, 3)), key="channel-means")
    cached = TransferDataModule(
        folder, image_size=32, batch_size=5, augment="none", cache_dir=str(tmp_path)
    )
    cached.setup("fit")
    cached.use_features(extractor, full_batch=True)
    features, _ = next(iter(cached.train_dataloader()))
    assert features.shape == (len(cached.datasets["train"]), 3)  # one batch of 3-wide features
    augmented = TransferDataModule(folder, image_size=32, batch_size=5, augment="light")
    augmented.setup("fit")
    augmented.use_features(extractor)
    assert augmented.extractor is None
    assert next(iter(augmented.train_dataloader()))[0].shape == (5, 3, 32, 32)
    with pytest.raises(TlkitError, match="full-batch L-BFGS needs cached features"):
        augmented.use_features(extractor, full_batch=True)
    cached.setup("fit")  # a new run: nothing is offered until its builder offers it again
    assert cached.extractor is None and not cached.full_batch
