"""Wrong or unusual input: one clear line and exit code 2 before training, or a run that copes.

Policy: an image that cannot be decoded is skipped with a count and the first few paths named
(``--strict`` makes it an error); every other problem stops before training with one line on
stderr that names the problem and the fix, exit code 2 and no traceback.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch  # noqa: F401
import pytest
import torch
from helpers import QUICK, error_line, write_classes
from torch.utils.data import TensorDataset

from tlkit.data import TransferDataModule
from tlkit.data.features import FeatureExtractor, cached_features
from tlkit.errors import TlkitError

pytestmark = pytest.mark.usefixtures("isolated_cwd")


def _shapes(tmp: Path) -> Path:
    return write_classes(tmp / "flat")


def _missing(tmp: Path) -> Path:
    return tmp / "no-such-folder"


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _one_class(tmp: Path) -> Path:
    root = write_classes(tmp / "one")
    shutil.rmtree(root / "square")
    shutil.rmtree(root / "triangle")
    return root


def _class_without_images(tmp: Path) -> Path:
    root = write_classes(tmp / "noimg")
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("no pictures here")
    return root


def _class_of_only_a_symlink_loop(tmp: Path) -> Path:
    root = write_classes(tmp / "loop")
    (root / "dog").mkdir()
    (root / "dog" / "again").symlink_to(root / "dog")
    return root


def _csv(tmp: Path, text: str) -> Path:
    root = write_classes(tmp / "csv")
    (root / "list.csv").write_text(text)
    return root / "list.csv"


def _csv_bad_header(tmp: Path) -> Path:
    return _csv(tmp, "file,class\ncircle/circle_00.png,circle\nsquare/square_00.png,square\n")


def _csv_missing_file(tmp: Path) -> Path:
    return _csv(tmp, "path,label\ncircle/circle_00.png,circle\ngone.png,square\n")


def _csv_empty_label(tmp: Path) -> Path:
    return _csv(tmp, "path,label\ncircle/circle_00.png,circle\nsquare/square_00.png,\n")


def _csv_test_class_not_in_train(tmp: Path) -> Path:
    return _csv(
        tmp,
        "path,label,split\ncircle/circle_00.png,circle,train\nsquare/square_00.png,square,train\n"
        "triangle/triangle_00.png,triangle,test\n",
    )


def _val_class_not_in_train(tmp: Path) -> Path:
    root = tmp / "splits"
    write_classes(root / "train")
    write_classes(root / "val")
    (root / "val" / "hexagon").mkdir()
    shutil.copy(root / "val" / "circle" / "circle_00.png", root / "val" / "hexagon" / "h.png")
    return root


def _truncated_idx(tmp: Path) -> Path:
    root = tmp / "idx"
    root.mkdir()
    header = bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0, 0, 4])
    (root / "train-images-idx3-ubyte").write_bytes(header + bytes(100))  # needs 160
    (root / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(10))
    return root


DATA_CASES: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "missing path": (_missing, [], "does not exist; pass demo, fashion-mnist, an image folder"),
    "empty folder": (_empty, [], "no images found in"),
    "one class": (_one_class, [], "only one class ('circle')"),
    "class folder without images": (_class_without_images, [], "/dog' has no images"),
    "symlink loop": (_class_of_only_a_symlink_loop, [], "/dog' has no images"),
    "csv bad header": (_csv_bad_header, [], "needs a header with columns 'path' and 'label'"),
    "csv missing file": (_csv_missing_file, [], "lists 1 missing file: 'gone.png'"),
    "csv empty label": (_csv_empty_label, [], "line 3: empty label for 'square/square_00.png'"),
    "csv test class": (_csv_test_class_not_in_train, [], "test rows use classes that train"),
    "val class": (_val_class_not_in_train, [], "'val/' has classes that train/ does not: hexagon"),
    "truncated idx": (_truncated_idx, [], "is truncated: header (10, 4, 4) needs 160 data bytes"),
    "shots": (_shapes, ["--shots", "40"], "--shots 40 needs 40 images per class"),
}


@pytest.mark.parametrize("command", ["finetune", "advise"])
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_that_cannot_train_stops_with_one_line(tmp_path, capsys, command, case):
    make, extra, expected = DATA_CASES[case]
    data = make(tmp_path)
    argv = [command, "--data", data, *extra, "--image-size", "32"]
    if command == "finetune":
        argv += ["--epochs", "1", "--out", tmp_path / "RUN"]
    line = error_line(capsys, *argv)
    assert expected in line
    assert "; " in line, "the message names a fix"
    assert not (tmp_path / "RUN").exists(), "a run that never started leaves no directory"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--recipe", "small-simlar"],
            "unknown recipe 'small-simlar'; did you mean: small-similar",
        ),
        (["--backbone", "tf_efficientnet_lit0"], "did you mean: tf_efficientnet_lite0"),
        (["--model.optimizer", "adamm"], "unknown optimizer 'adamm'; did you mean: adam, adamw"),
        (
            ["--model.strategy", "linear_prob"],
            "unknown strategy 'linear_prob'; did you mean: linear",
        ),
        (["--model.scheduler", "cosin"], "unknown scheduler 'cosin'; did you mean: cosine"),
        (["--data.augment", "lite"], "unknown augmentation preset 'lite'; did you mean: light"),
        (["--model.strategy_args.prior", "pretraind"], "unknown prior 'pretraind'; did you mean"),
    ],
)
def test_unknown_names_suggest_close_matches(tmp_path, capsys, argv, expected):
    data = write_classes(tmp_path / "data")
    line = error_line(capsys, "finetune", "--data", data, *QUICK, "--out", "RUN", *argv)
    assert expected in line


def test_advise_unknown_backbone_suggests_close_matches(tmp_path, capsys):
    data = write_classes(tmp_path / "data")
    line = error_line(capsys, "advise", "--data", data, "--backbone", "tf_efficientnet_lit0")
    assert "unknown backbone 'tf_efficientnet_lit0'; did you mean: tf_efficientnet_lite0" in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--epochs", "0"], "--epochs must be positive, got 0"),
        (["--epochs", "-3"], "--epochs must be positive, got -3"),
        (["--lr", "0"], "--lr must be positive, got 0.0"),
        (["--lr", "-0.5"], "--lr must be positive, got -0.5"),
        (["--image-size", "0"], "--image-size must be positive, got 0"),
        (["--image-size", "-32"], "--image-size must be positive, got -32"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["--shots", "-1"], "--shots must be positive, got -1"),
        (["--model.lr", "0"], "learning rate must be positive, got 0.0"),
        (["--data.image_size", "-3"], "image size must be positive, got -3"),
        (["--data.batch_size", "0"], "batch size must be positive, got 0"),
        (["--model.dropout", "-0.5"], "dropout must be >= 0 and < 1, got -0.5"),
        (["--model.head_hidden", "-5"], "head_hidden must be >= 0, got -5"),
        (["--model.weight_decay", "-1"], "weight_decay must be >= 0, got -1.0"),
        (["--model.label_smoothing", "1.5"], "label_smoothing must be in [0, 1), got 1.5"),
    ],
)
def test_non_positive_numbers_are_refused(tmp_path, capsys, argv, expected):
    data = write_classes(tmp_path / "data")
    line = error_line(capsys, "finetune", "--data", data, *QUICK, "--out", "RUN", *argv)
    assert expected in line
    assert not (tmp_path / "RUN").exists()


def test_advise_refuses_non_positive_numbers(tmp_path, capsys):
    data = write_classes(tmp_path / "data")
    assert "--image-size must be positive, got 0" in error_line(
        capsys, "advise", "--data", data, "--image-size", "0"
    )
    assert "--folds must be at least 2" in error_line(capsys, "advise", "--folds", "1")


def test_a_finetune_in_process_leaves_the_environment_as_it_found_it(capsys):
    """A finetune hands nothing to the next one (a notebook) through the environment or the
    command line: DDP ranks get the resolved run through ``sys.argv`` only while a run lasts."""

    def own(env):  # Lightning's seed_everything exports PL_GLOBAL_SEED for its workers
        return {k: v for k, v in env.items() if not k.startswith("PL_")}

    environ, argv = own(os.environ), list(sys.argv)
    error_line(capsys, "finetune", "--data", "no-such-folder", "--out", "FIRST")
    assert own(os.environ) == environ
    assert sys.argv == argv


def test_an_output_directory_that_cannot_be_written(tmp_path, capsys):
    data = write_classes(tmp_path / "data")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_line(capsys, "finetune", "--data", data, *QUICK, "--out", blocker / "run")
    assert f"cannot write to output directory {blocker / 'run'}" in line
    assert "pass --out DIR" in line


NOT_AN_IMAGE = "(not a recognised image format)"


#: The cached-feature path (the default recipe: ``augment: none``, ``cache_features: true``)
#: and the path that decodes images every epoch.
FEATURE_PATHS = {
    "cached": [],
    "uncached": ["--data.augment", "light", "--data.cache_features", "false"],
}


TINY = ["--backbone", "test_efficientnet", "--model.pretrained", "false"]


def _break(folder: Path) -> None:
    """Overwrite every PNG below ``folder`` with bytes that are no image."""
    for path in folder.rglob("*.png"):
        path.write_bytes(b"not an image")


def _all_undecodable(tmp: Path) -> tuple[Path, str]:
    root = write_classes(tmp / "flat")
    _break(root)
    return root, f"no decodable images in {root} (12 undecodable, e.g. {root}/circle/circle_0"


def _class_undecodable(tmp: Path) -> tuple[Path, str]:
    root = write_classes(tmp / "flat")
    _break(root / "square")
    # 4 per class: 1 held out for test, 1 for val, 2 left to train on.
    return root, (
        "class 'square' has no decodable training image left (2 undecodable, e.g. "
        f"{root}/square/square_0"
    )


def _split_undecodable(tmp: Path, split: str) -> tuple[Path, str]:
    root = tmp / "splits"
    for name in ("train", "val", "test"):
        write_classes(root / name)
    _break(root / split)
    return root, f"no decodable images left in {split} (12 undecodable, e.g. {root}/{split}/"


UNDECODABLE_CASES: dict[str, tuple[Callable[[Path], tuple[Path, str]], str]] = {
    "all files": (_all_undecodable, f"{NOT_AN_IMAGE}); replace or remove them"),
    "one class": (_class_undecodable, f"{NOT_AN_IMAGE}); replace them or remove the class"),
    "val/": (
        lambda tmp: _split_undecodable(tmp, "val"),
        f"{NOT_AN_IMAGE}); replace or remove them, or remove val/ to hold out part of train",
    ),
    "test/": (
        lambda tmp: _split_undecodable(tmp, "test"),
        f"{NOT_AN_IMAGE}); replace or remove them, or remove test/ to hold out part of train",
    ),
}


@pytest.mark.parametrize("path", list(FEATURE_PATHS))
@pytest.mark.parametrize("case", list(UNDECODABLE_CASES))
def test_undecodable_images_that_leave_nothing_to_use_stop_with_one_line(
    tmp_path, capsys, monkeypatch, case, path
):
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(tmp_path / "cache"))
    make, fix = UNDECODABLE_CASES[case]
    data, problem = make(tmp_path)
    argv = ["finetune", "--data", data, *QUICK, *TINY, "--out", tmp_path / "RUN"]
    line = error_line(capsys, *argv, *FEATURE_PATHS[path])
    assert problem in line
    assert line.endswith(fix)
    assert not (tmp_path / "RUN").exists()


@pytest.mark.parametrize("case", list(UNDECODABLE_CASES))
def test_setup_refuses_them_too(tmp_path, case):
    """``trainer.fit(model, datamodule)`` without ``tlkit finetune`` goes through ``setup``."""
    make, fix = UNDECODABLE_CASES[case]
    data, problem = make(tmp_path)
    dm = TransferDataModule(str(data), backbone="test_efficientnet", image_size=32)
    with pytest.raises(TlkitError) as refused:
        dm.setup("fit")
    assert problem in str(refused.value)
    assert str(refused.value).endswith(fix)


def test_strict_names_the_empty_split_rather_than_strict_itself(tmp_path, capsys):
    """Dropping --strict would not help: the message asks for images."""
    data, problem = _split_undecodable(tmp_path, "val")
    argv = ["finetune", "--data", data, *QUICK, *TINY, "--out", "RUN", "--strict"]
    line = error_line(capsys, *argv)
    assert problem in line
    assert "--strict" not in line


def test_a_split_folder_is_named_as_it_is_spelled(tmp_path):
    data, _ = _split_undecodable(tmp_path, "val")
    (data / "val").rename(data / "validation")
    dm = TransferDataModule(str(data), backbone="test_efficientnet", image_size=32)
    with pytest.raises(TlkitError, match=r"or remove validation/ to hold out part of train$"):
        dm.check_images()


def test_a_csv_split_is_removed_by_its_rows(tmp_path):
    data, _ = _split_undecodable(tmp_path, "test")
    rows = [
        f"{path.relative_to(data)},{path.parent.name},{path.parts[-3]}"
        for path in sorted(data.rglob("*.png"))
    ]
    (data / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    dm = TransferDataModule(str(data / "list.csv"), backbone="test_efficientnet", image_size=32)
    fix = rf"or remove the test rows of {data / 'list.csv'} to hold out part of train$"
    with pytest.raises(TlkitError, match=fix):
        dm.check_images()


def test_measured_images_that_all_fail_to_decode_are_refused(tmp_path):
    """``tlkit advise`` measures a sample through ``drop_undecodable``."""
    data, _ = _all_undecodable(tmp_path)
    dm = TransferDataModule(str(data), backbone="test_efficientnet", image_size=32)
    expected = r"no decodable images left in the measured images \(4 undecodable, e\.g\. "
    with pytest.raises(TlkitError, match=expected):
        dm.drop_undecodable("the measured images", dm.source.train.subset(range(4)))


def test_the_feature_cache_refuses_an_empty_dataset(tmp_path):
    extractor = FeatureExtractor(lambda images: images.flatten(1), key="flatten")
    empty = TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(TlkitError, match=r"^no images for val features \(empty split\); add "):
        cached_features(extractor, empty, {}, tmp_path, description="val features")
    assert not any(tmp_path.iterdir()), "nothing is cached"
