"""A long-tailed folder: advise says it is imbalanced, the probe is chosen and predicted on
balanced accuracy, and the run reports balanced accuracy and per-class recall (a large cell,
median 100 per class, and a small one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import needs_lite0, write_shapes

from tlkit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cwd")]


@needs_lite0
def test_a_100_to_3_folder_runs_end_to_end_and_says_it_is_imbalanced(tmp_path, capsys):
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=100, seed=0)
    for extra in sorted((data / "train" / "triangle").glob("*.png"))[3:]:
        extra.unlink()  # 100 circles, 100 squares, 3 triangles
    write_shapes(data / "val", per_class=4, seed=2)
    write_shapes(data / "test", per_class=20, seed=1)
    argv = ["finetune", "--recipe", "auto", "--data", str(data), "--image-size", "32"]
    assert main([*argv, "--out", "RUN"]) == 0
    out = capsys.readouterr().out
    advice = json.loads(Path("RUN/advise.json").read_text())
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    evidence = advice["evidence"]
    assert evidence["imbalanced"] is True
    assert evidence["class_counts"] == [100, 100, 3]
    assert evidence["imbalance_ratio"] == pytest.approx(100 / 3, rel=1e-3)
    assert "imbalanced" in evidence["reason"]
    assert advice["expected_accuracy"]["metric"] == "balanced_accuracy"
    assert advice["probe"]["metric"] == "balanced_accuracy"
    assert metrics["recipe"].startswith("large-")
    assert metrics["class_balance"] == "logit-adjusted"  # the fine-tuning's loss, by default
    assert metrics["probe"]["balance"] == advice["probe"]["balance"] == "balanced"
    assert metrics["imbalance_ratio"] == pytest.approx(100 / 3, rel=1e-3)
    assert "the classes are imbalanced (3 to 100 training images" in out
    per_class = metrics["per_class_test_acc"]
    assert set(per_class) == {"circle", "square", "triangle"}
    assert metrics["test_balanced_acc"] == pytest.approx(sum(per_class.values()) / 3)
    assert per_class["triangle"] >= 0.5  # the 3-image class is still found on a balanced test
    assert "test_balanced_acc" in out


@needs_lite0
def test_a_small_imbalanced_folder_predicts_balanced_accuracy(tmp_path, capsys):
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=30, seed=0)
    for extra in sorted((data / "train" / "square").glob("*.png"))[4:]:
        extra.unlink()  # 30 circles, 4 squares, 30 triangles
    write_shapes(data / "test", per_class=20, seed=1)
    argv = ["finetune", "--recipe", "auto", "--data", str(data), "--image-size", "32"]
    assert main([*argv, "--out", "RUN"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["recipe"].startswith("small-")
    assert metrics["expected_accuracy"]["metric"] == "balanced_accuracy"
    assert "expected balanced accuracy" in out
    assert metrics["cv_metric"] == "balanced_accuracy"
    assert set(metrics["balance_options"]) == {"none", "sqrt", "balanced", "logit-adjusted"}
    assert metrics["balance"] in metrics["balance_options"]
    expected = metrics["expected_accuracy"]
    assert expected["low"] <= metrics["test_balanced_acc"] <= expected["high"]
