"""``solver: auto`` runs: frozen heads solved exactly, one pass over the images, a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_shapes, write_sides

from tlkit.cli import main
from tlkit.inference import ensemble_probabilities, load_checkpoint

pytestmark = pytest.mark.usefixtures("isolated_cwd")

TINY = ["--backbone", "test_efficientnet", "--model.pretrained", "false", "--image-size", "32"]


def test_an_exact_run_writes_a_run_folder_whose_checkpoint_predicts_what_was_tested(
    tmp_path, capsys
):
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=12, seed=0)
    write_shapes(data / "test", per_class=6, seed=1)
    assert main(["finetune", "--data", str(data), *TINY, "--out", "RUN"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["solver"] == "exact" and metrics["epochs"] == 0
    assert metrics["labelled"] == metrics["num_train"] + metrics["num_val"] == 36
    assert metrics["l2"] > 0 and 0 < metrics["cv_acc"] <= 1
    assert set(metrics["seconds"]) == {"features", "probe", "test", "checkpoint_and_report"}
    assert "expected accuracy (cross-validated, before the test)" in out
    assert Path("RUN/report.md").is_file() and Path("RUN/plots/confusion_matrix.png").is_file()
    # The checkpoint, run on the test images through the backbone, scores what was reported.
    loaded = load_checkpoint("RUN/checkpoints/best.ckpt")
    items, labels = [], []
    for label, folder in enumerate(sorted((data / "test").iterdir())):
        for image in sorted(folder.iterdir()):
            items.append(str(image))
            labels.append(label)
    probs = ensemble_probabilities([loaded], items, progress=False)
    accuracy = float((probs.argmax(1) == torch.tensor(labels)).float().mean())
    assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)


def test_a_multi_stage_probe_reads_the_stages_it_names(make_shapes):
    data = make_shapes(per_class=8)
    argv = ["finetune", "--recipe", "small-different", "--data", str(data), *TINY, "--out", "RUN"]
    assert main([*argv, "--model.strategy_args.stage", '["top", 1]']) == 0
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["strategy"]["stage"] == ["top", 1]
    loaded = load_checkpoint("RUN/checkpoints/best.ckpt")
    backbone = loaded.model.backbone
    width = backbone.num_features + backbone.feature_info[1]["num_chs"]
    assert loaded.model.head[-1].in_features == width


def test_a_grid_probe_tells_apart_what_only_position_separates(tmp_path):
    # A square left or right of centre: global pooling all but loses where it is; a 2x2 grid of
    # the same stage's map keeps it, and the checkpoint reads the grid it was fitted on.
    data = tmp_path / "data"
    write_sides(data / "train", per_class=20, seed=3)
    write_sides(data / "test", per_class=20, seed=4)
    argv = ["finetune", "--recipe", "small-different", "--data", str(data), *TINY]
    accuracy = {}
    for grid in (1, 2):
        stage = ["--model.strategy_args.stage", "1", "--model.strategy_args.grid", str(grid)]
        assert main([*argv, *stage, "--out", f"RUN{grid}"]) == 0
        accuracy[grid] = json.loads(Path(f"RUN{grid}/metrics.json").read_text())["test_acc"]
    assert accuracy[2] >= 0.95
    assert accuracy[1] <= accuracy[2] - 0.1
    loaded = load_checkpoint("RUN2/checkpoints/best.ckpt")
    assert loaded.model.strategy.grid == 2
    channels = loaded.model.backbone.feature_info[1]["num_chs"]
    assert loaded.model.head[-1].in_features == 4 * channels
    items = sorted(str(p) for p in (data / "test").glob("*/*.png"))
    labels = torch.tensor([0 if "/left/" in item else 1 for item in items])
    probs = ensemble_probabilities([loaded], items, progress=False)
    assert float((probs.argmax(1) == labels).float().mean()) == pytest.approx(accuracy[2])


def test_one_labelled_image_per_class_still_fits(tmp_path):
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=1, seed=0)
    write_shapes(data / "test", per_class=4, seed=1)
    assert main(["finetune", "--data", str(data), *TINY, "--out", "RUN"]) == 0
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["labelled"] == 3 and metrics["num_test"] == 12


def test_solver_exact_refuses_a_backbone_that_trains(make_shapes, capsys):
    data = make_shapes(per_class=4)
    argv = ["finetune", "--data", str(data), *TINY, "--out", "RUN", "--model.solver", "exact"]
    assert main([*argv, "--model.strategy", "partial"]) == 2
    assert "solver exact fits a linear head on frozen features" in capsys.readouterr().err


def test_a_named_recipe_overriding_the_strategy_trains_by_epochs(make_shapes):
    data = make_shapes(per_class=4)
    argv = ["finetune", "--data", str(data), *TINY, "--out", "RUN", "--epochs", "1"]
    assert main([*argv, "--model.strategy", "partial"]) == 0
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["epochs"] == 1 and "solver" not in metrics
