"""Wrong or unusual input: one clear line and exit code 2 before training, or a run that copes.

Policy: an image that cannot be decoded is skipped with a count and the first few paths named
(``--strict`` makes it an error); every other problem stops before training with one line on
stderr that names the problem and the fix, exit code 2 and no traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from tlkit.cli import main
from tlkit.data import TransferDataModule
from tlkit.data.features import FeatureExtractor, cached_features
from tlkit.errors import TlkitError

QUICK = ["--epochs", "1", "--image-size", "32"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    """Run in a scratch folder; give every finetune its own run directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TLKIT_RUN_DIR", "")


def error_line(capsys: pytest.CaptureFixture, *argv: object) -> str:
    """Run ``tlkit ARGV`` in-process; it must fail with exit code 2 and one line on stderr."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("tlkit: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


# --- data that cannot make a training set ------------------------------------------------


def write_classes(root: Path, per_class: int = 4, size: int = 8, seed: int = 0) -> Path:
    """``root/{circle,square,triangle}/*.png``: small noise images, one colour cast per class."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("circle", "square", "triangle")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
            pixels[..., c] += 127
            Image.fromarray(pixels).save(root / name / f"{name}_{i:02d}.png")
    return root


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


# --- names, numbers and values ------------------------------------------------------------


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


def test_negative_values_reach_the_option_they_belong_to(tmp_path, capsys):
    data = write_classes(tmp_path / "data")
    epochs = ["--model.solver", "epochs"]
    code = main(
        [
            "finetune",
            "--data",
            str(data),
            *QUICK,
            *epochs,
            "--out",
            "RUN",
            "--trainer.max_epochs",
            "-1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("tlkit: error: training has no end")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--model.head_hidden", "abc"],
            "invalid value for --model.head_hidden: expected int, got abc",
        ),
        (["--trainer.max_epochs", "x"], "invalid value for --trainer.max_epochs: expected one of"),
        (["--model.strategy_args", "[1]"], "invalid value for --model.strategy_args"),
        (["--model.optimiser", "adam"], "unrecognized arguments: --model.optimiser adam"),
        (["--trainer.devices", "0"], "Trainer(devices='0')` value is not a valid input"),
        (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ],
)
def test_bad_config_values_give_one_line(tmp_path, capsys, argv, expected):
    data = write_classes(tmp_path / "data")
    line = error_line(capsys, "finetune", "--data", data, *QUICK, "--out", "RUN", *argv)
    assert expected in line
    assert "see `tlkit finetune --help`" in line


def test_a_finetune_in_process_leaves_the_environment_as_it_found_it(capsys, monkeypatch):
    """The run directory reaches DDP ranks through the environment; a second finetune in the
    same process (a notebook) must not inherit the first one's."""
    monkeypatch.delenv("TLKIT_RUN_DIR")
    error_line(capsys, "finetune", "--data", "no-such-folder", "--out", "FIRST")
    assert "TLKIT_RUN_DIR" not in os.environ


def test_an_output_directory_that_cannot_be_written(tmp_path, capsys):
    data = write_classes(tmp_path / "data")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = error_line(capsys, "finetune", "--data", data, *QUICK, "--out", blocker / "run")
    assert f"cannot write to output directory {blocker / 'run'}" in line
    assert "pass --out DIR" in line


# --- unusual images: a run that copes -------------------------------------------------------

UNUSUAL_MODES = ("L", "LA", "P", "RGBA", "CMYK", "I;16", "1")
BAD_FILES = ("corrupt.png", "empty.jpg", "text.png", "truncated.jpg", "truncated.png")


def _mode_image(mode: str, rng: np.random.Generator) -> Image.Image:
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    return rgb.convert(mode)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def build_unusual_folder(root: Path) -> dict[str, object]:
    """train/val/test with a class name of spaces and non-ASCII, odd images and broken files."""
    for split in ("train", "val", "test"):
        write_classes(root / split, per_class=4, size=16, seed=len(split))
        (root / split / "circle").rename(root / split / "red círculo")
    train = root / "train"
    rng = np.random.default_rng(0)
    good = []
    for i, mode in enumerate(UNUSUAL_MODES):
        fmt, ext = ("JPEG", "jpg") if mode == "CMYK" else ("PNG", "png")
        path = train / ["red círculo", "square", "triangle"][i % 3] / f"mode {mode[:2]}.{ext}"
        _mode_image(mode, rng).save(path, fmt)
        good.append(path)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(train / "red círculo" / "one pixel.png")
    Image.new("L", (6000, 4000), 128).save(train / "square" / "huge 6000x4000.png")
    shutil.copy(train / "triangle" / "triangle_00.png", train / "triangle" / "ñandú 猫.png")
    good += [
        train / "red círculo" / "one pixel.png",
        train / "square" / "huge 6000x4000.png",
        train / "triangle" / "ñandú 猫.png",
    ]
    sample = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    png, jpg = _encoded(sample, "PNG"), _encoded(sample, "JPEG")
    broken = train / "square"
    (broken / "corrupt.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "text.png").write_text("not an image")
    (broken / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (broken / "truncated.png").write_bytes(png[: len(png) // 2])
    (broken / "notes.txt").write_text("ignored: not an image extension")
    (broken / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (train / "triangle" / "loop").symlink_to(train / "triangle")
    return {"root": root, "good": good, "num_train": 12 + len(good)}


@pytest.fixture(scope="module")
def unusual_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One real Lite0 run (32 px, light augmentation) on the unusual folder."""
    tmp = tmp_path_factory.mktemp("unusual")
    info = build_unusual_folder(tmp / "data")
    run = tmp / "RUN"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setenv("TLKIT_RUN_DIR", "")
        mp.setenv("TLKIT_CACHE_DIR", str(tmp / "cache"))
        argv = ["finetune", "--data", str(info["root"]), *QUICK, "--batch-size", "8", "--out"]
        argv += [str(run), "--data.augment", "light", "--trainer.enable_progress_bar", "false"]
        code = main(argv)
    torch.set_num_threads(threads)
    return {**info, "code": code, "run": run, "warnings": [str(w.message) for w in caught]}


def test_unusual_images_train_and_undecodable_ones_are_skipped_and_named(unusual_run):
    assert unusual_run["code"] == 0
    metrics = json.loads((unusual_run["run"] / "metrics.json").read_text())
    assert metrics["num_train"] == unusual_run["num_train"]
    assert (metrics["num_val"], metrics["num_test"]) == (12, 12)
    assert 0.0 <= metrics["test_acc"] <= 1.0
    (skipped,) = [w for w in unusual_run["warnings"] if "undecodable" in w]
    assert skipped.startswith(f"skipping {len(BAD_FILES)} undecodable image(s) in train, e.g. ")
    named = [name for name in BAD_FILES if f"square/{name} (" in skipped]
    assert len(named) == 3, skipped
    best = torch.load(unusual_run["run"] / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["hyper_parameters"]["class_names"] == ["red círculo", "square", "triangle"]


def test_strict_refuses_undecodable_images_before_training(capsys, unusual_run):
    root = unusual_run["root"]
    line = error_line(capsys, "finetune", "--data", root, *QUICK, "--out", "RUN", "--strict")
    assert f"{len(BAD_FILES)} undecodable image(s) in train, e.g. " in line
    assert "drop --strict to skip them" in line
    assert not Path("RUN").exists()


def test_predict_and_evaluate_skip_undecodable_images_and_strict_refuses_them(capsys, unusual_run):
    best = unusual_run["run"] / "checkpoints" / "best.ckpt"
    folder = unusual_run["root"] / "train"
    assert (
        main(["predict", "--checkpoint", str(best), "--data", str(folder), "--out", "p.csv"]) == 0
    )
    err = capsys.readouterr().err
    assert f"skipping {len(BAD_FILES)} undecodable image(s)" in err
    rows = Path("p.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + unusual_run["num_train"]
    assert not any(name in "".join(rows) for name in BAD_FILES)
    line = error_line(
        capsys, "predict", "--checkpoint", best, "--data", folder, "--out", "q.csv", "--strict"
    )
    assert f"{len(BAD_FILES)} of {len(BAD_FILES) + unusual_run['num_train']} image(s)" in line
    assert not Path("q.csv").exists()

    root = unusual_run["root"]
    evaluate = ["evaluate", "--checkpoint", str(best), "--data", str(root), "--split", "train"]
    assert main([*evaluate, "--out", "evaluation"]) == 0
    assert f"skipping {len(BAD_FILES)} undecodable image(s)" in capsys.readouterr().err
    result = json.loads(Path("evaluation/evaluation.json").read_text())
    assert result["num_samples"] == unusual_run["num_train"]
    assert "drop --strict to skip them" in error_line(capsys, *evaluate, "--strict")


def test_advise_skips_undecodable_images(capsys, unusual_run):
    root = unusual_run["root"]
    skipped = rf"skipping {len(BAD_FILES)} undecodable image\(s\) in train"
    with pytest.warns(UserWarning, match=skipped):
        code = main(["advise", "--data", str(root), "--image-size", "32", "--json", "--folds", "2"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_classes"] == 3


# --- undecodable images that leave a split or a class empty -----------------------------------

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


# --- weights and checkpoints ----------------------------------------------------------------


def test_weights_from_a_checkpoint_for_another_class_count_load_without_its_head(
    tmp_path, unusual_run
):
    best = unusual_run["run"] / "checkpoints" / "best.ckpt"
    two = write_classes(tmp_path / "two", size=16)
    shutil.rmtree(two / "triangle")
    argv = ["finetune", "--data", str(two), *QUICK, "--out", "RUN", "--weights", str(best)]
    code = main([*argv, "--trainer.enable_progress_bar", "false"])
    assert code == 0
    source = torch.load(best, weights_only=True)["state_dict"]
    result = torch.load(tmp_path / "RUN/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert source["head.1.weight"].shape[0] == 3
    assert result["head.1.weight"].shape[0] == 2
    backbone = [k for k in source if k.startswith("backbone.")]
    assert backbone and all(torch.equal(source[k], result[k]) for k in backbone)


def _edited_checkpoint(best: Path, target: Path, **hparams) -> Path:
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, target)
    return target


def test_unusable_weights_files_give_one_line(tmp_path, capsys, unusual_run):
    data = write_classes(tmp_path / "data")
    best = unusual_run["run"] / "checkpoints" / "best.ckpt"
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage")
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "truncated.ckpt").write_bytes(best.read_bytes()[:100_000])
    torch.save(timm.create_model("test_resnet", num_classes=7).state_dict(), "resnet.pth")
    cases = {
        "garbage.ckpt": "cannot read weights file garbage.ckpt (not a valid pickle)",
        "empty.pth": "cannot read weights file empty.pth (file is empty or truncated)",
        "truncated.ckpt": "cannot read weights file truncated.ckpt",
        "resnet.pth": "weights file resnet.pth does not fit backbone tf_efficientnet_lite0",
        "gone.pth": "weights file gone.pth does not exist; check --weights",
    }
    for name, expected in cases.items():
        line = error_line(capsys, "finetune", "--data", data, *QUICK, "--out", "RUN",
                          "--weights", name)  # fmt: skip
        assert expected in line, name
    assert not Path("RUN").exists()


def test_unusable_checkpoints_for_predict_and_evaluate_give_one_line(tmp_path, capsys, unusual_run):
    best = unusual_run["run"] / "checkpoints" / "best.ckpt"
    image = unusual_run["good"][0]
    (tmp_path / "garbage.ckpt").write_bytes(b"garbage")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "truncated.ckpt").write_bytes(best.read_bytes()[:100_000])
    _edited_checkpoint(best, tmp_path / "classes5.ckpt", num_classes=5, class_names=None)
    _edited_checkpoint(best, tmp_path / "resnet.ckpt", backbone="test_resnet")
    cases = {
        "garbage.ckpt": "garbage.ckpt is corrupt or not a checkpoint (not a valid pickle",
        "empty.ckpt": "checkpoint empty.ckpt is corrupt or not a checkpoint (file is empty",
        "truncated.ckpt": "checkpoint truncated.ckpt is corrupt or not a checkpoint (",
        "classes5.ckpt": "does not fit its own model config (size mismatch for head.1.weight",
        "resnet.ckpt": "does not fit its own model config (Missing key(s)",
        "gone.ckpt": "checkpoint gone.ckpt does not exist",
    }
    for name, expected in cases.items():
        line = error_line(capsys, "predict", "--checkpoint", name, "--data", image)
        assert expected in line, name
    other = write_classes(tmp_path / "other", per_class=2)
    (other / "circle").rename(other / "hexagon")
    line = error_line(capsys, "evaluate", "--checkpoint", best, "--data", other, "--split", "train")
    assert "classes ['hexagon'] of" in line
    assert "not among the model's classes" in line


def test_predict_input_and_output_problems_give_one_line(tmp_path, capsys, unusual_run):
    best = unusual_run["run"] / "checkpoints" / "best.ckpt"
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    assert "--data nope does not exist" in error_line(
        capsys, "predict", "--checkpoint", best, "--data", "nope"
    )
    assert "no images found under" in error_line(
        capsys, "predict", "--checkpoint", best, "--data", tmp_path / "empty"
    )
    image = unusual_run["good"][0]
    line = error_line(capsys, "predict", "--checkpoint", best, "--data", image, "--out",
                      tmp_path / "a-file" / "p.csv")  # fmt: skip
    assert "cannot write" in line and "pass a writable --out FILE" in line
