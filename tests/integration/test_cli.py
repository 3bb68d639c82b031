"""Tests for the ``tlkit`` command: finetune runs, the Lightning CLI path, errors, recipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlkit.data import TransferDataModule
from tlkit.module import TransferModule
from tlkit.recipes import recipe_path

pytestmark = pytest.mark.slow  # the real Lite0 weights, the command line


TIMEOUT = 600


def _env() -> dict[str, str]:
    """The test's environment (its feature cache folder included), with torch on one thread.

    One thread keeps a run fast when other processes share the CPU; results do not depend on it.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def tlkit(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m tlkit ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "tlkit", *map(str, args)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def assert_clean_success(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    noises = ("in eval mode", "LeafSpec", "args parameter is intended", "Seed set to",
              "logging interval")  # fmt: skip
    for noise in noises:
        assert noise not in result.stderr
    for banner in ("GPU available", "TPU available", "Tip:", "Total params"):  # --verbose only
        assert banner not in result.stderr + result.stdout


@torch.no_grad()
def accuracy_on_test(model: TransferModule, dm: TransferDataModule) -> float:
    dm.setup("test")
    model.eval()
    hits = total = 0
    for images, labels in dm.test_dataloader():
        hits += int((model(images).argmax(dim=1) == labels).sum())
        total += len(labels)
    return hits / total


def test_finetune_demo_with_real_lite0_writes_a_complete_run(tmp_path, cache_dir):
    result = tlkit(
        "finetune", "--recipe", "small-similar", "--epochs", 3, "--image-size", 64, "--out", "RUN",
        cwd=tmp_path,
    )  # fmt: skip
    assert_clean_success(result)
    run = tmp_path / "RUN"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "tlkit results" in result.stdout
    assert re.search(rf"test_acc\W+{metrics['test_acc']:.4f}", result.stdout)
    assert metrics["test_acc"] > 0.4
    assert metrics["val_acc"] > 0.4  # scored by the probe fitted on train alone
    assert metrics["epochs"] == 0  # the head is solved, not trained
    assert metrics["labelled"] == 300  # train and val both fit the final head
    assert metrics["fit_seconds"] > 0
    assert (metrics["num_train"], metrics["num_val"], metrics["num_test"]) == (200, 100, 500)
    config = (run / "config.yaml").read_text()
    assert "max_epochs: 3" in config
    assert "image_size: 64" in config
    assert "seed_everything: 42" in config
    assert list(cache_dir.rglob("*.safetensors"))

    best = run / "checkpoints" / "best.ckpt"
    model = TransferModule.load_from_checkpoint(best)
    dm = TransferDataModule("demo", image_size=64, augment="none")
    assert model.hparams.class_names == dm.class_names
    # the checkpoint is the model that was tested (images through the backbone, not the cache)
    assert accuracy_on_test(model, dm) == pytest.approx(metrics["test_acc"], abs=0.005)


def test_finetune_on_an_own_image_folder(tmp_path, make_shapes):
    folder = make_shapes(per_class=12)
    result = tlkit(
        "finetune", "--data", folder, "--epochs", 3, "--image-size", 64, "--out", "RUN",
        cwd=tmp_path,
    )  # fmt: skip
    assert_clean_success(result)
    metrics = json.loads((tmp_path / "RUN" / "metrics.json").read_text())
    assert metrics["num_classes"] == 3
    assert (metrics["num_train"], metrics["num_val"], metrics["num_test"]) == (24, 6, 6)
    assert metrics["data"] == str(folder)
    assert metrics["test_acc"] >= 0.5
    assert "test_top5" not in metrics
    model = TransferModule.load_from_checkpoint(tmp_path / "RUN" / "checkpoints" / "best.ckpt")
    assert model.hparams.class_names == ["circle", "square", "triangle"]


def test_lightning_fit_subcommand_runs_a_recipe(tmp_path):
    recipe = recipe_path("small-similar").resolve()
    result = tlkit(
        "fit", "--config", recipe, "--trainer.max_epochs", 1, "--data.image_size", 32,
        "--trainer.default_root_dir", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert_clean_success(result)
    names = {p.name for p in (tmp_path / "out").rglob("*.ckpt")}
    assert names == {"best.ckpt", "last.ckpt"}
    (log,) = (tmp_path / "out").rglob("metrics.csv")
    assert "val_acc" in log.read_text().splitlines()[0]


def test_data_and_backbone_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        (["--data", "/does/not/exist"], "data path '/does/not/exist' does not exist"),
        (
            ["--backbone", "tf_efficientnet_lit0"],
            "unknown backbone 'tf_efficientnet_lit0'; did you mean: tf_efficientnet_lite0",
        ),
    ]
    runs = [
        (
            subprocess.Popen(
                [sys.executable, "-m", "tlkit", "finetune", *args],
                cwd=tmp_path,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            expected,
        )
        for args, expected in cases
    ]
    for proc, expected in runs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 2, err
        (line,) = err.splitlines()
        assert line.startswith(f"tlkit: error: {expected}")
