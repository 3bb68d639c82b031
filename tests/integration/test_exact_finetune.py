"""``solver: auto`` runs: frozen heads solved exactly, one pass over the images, a run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import needs_lite0, write_shapes, write_sides

from tlkit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cwd")]


@needs_lite0
def test_auto_with_one_labelled_image_per_class(tmp_path):
    data = tmp_path / "data"
    write_shapes(data / "train", per_class=1, seed=0)
    write_shapes(data / "test", per_class=4, seed=1)
    assert main(["finetune", "--recipe", "auto", "--data", str(data), "--image-size", "32",
                 "--out", "RUN"]) == 0  # fmt: skip
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["labelled"] == 3 and metrics["recipe"].startswith("small-")


@needs_lite0
def test_auto_fits_the_advised_probe_from_the_measured_features(make_shapes, cache_dir):
    data = make_shapes(per_class=10)
    argv = ["finetune", "--recipe", "auto", "--data", str(data), "--image-size", "32"]
    assert main([*argv, "--out", "RUN"]) == 0
    advice = json.loads(Path("RUN/advise.json").read_text())
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["recipe"] == advice["recipe"]
    stage = advice["probe_stage"]
    if stage is None:  # the top features alone: the small-similar recipe
        assert metrics["recipe"] == "small-similar"
    else:
        assert metrics["strategy"]["stage"] == stage
    assert metrics["expected_accuracy"] == advice["expected_accuracy"]
    assert metrics["test_acc"] > 0.6  # coloured shapes: easy for ImageNet features
    # One pass over the images: the cache holds advise's per-split stage features and nothing else.
    cached = sorted(cache_dir.rglob("*.safetensors"))
    assert len(cached) == 3


@needs_lite0
def test_auto_with_a_grid_reads_the_grid_not_advise_s_pooled_features(tmp_path):
    # advise measures pooled features; a run told to read a 2x2 grid must extract its own.
    data = tmp_path / "data"
    write_sides(data / "train", per_class=20, seed=3)
    write_sides(data / "test", per_class=20, seed=4)
    argv = ["finetune", "--recipe", "auto", "--data", str(data), "--image-size", "32"]
    assert main([*argv, "--model.strategy_args.grid", "2", "--out", "RUN"]) == 0
    metrics = json.loads(Path("RUN/metrics.json").read_text())
    assert metrics["recipe"] == "small-different" and metrics["strategy"]["grid"] == 2
    assert metrics["test_acc"] >= 0.95
