"""Wrong or unusual input: one clear line and exit code 2 before training, or a run that copes.

Policy: an image that cannot be decoded is skipped with a count and the first few paths named
(``--strict`` makes it an error); every other problem stops before training with one line on
stderr that names the problem and the fix, exit code 2 and no traceback.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

# Lightning binds its log handler to sys.stderr when first imported: import it at collection,
# before a test captures stderr, so the handler never writes to a closed capture stream.
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import timm
import torch
from helpers import QUICK, error_line, write_classes
from PIL import Image

from tlkit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cwd")]


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
    correct = metrics["test_acc"] * 12  # every one of the 12 test images was scored
    assert correct == pytest.approx(round(correct), abs=1e-4)
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
