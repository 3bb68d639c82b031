"""advise: the decision rule on made-up scores, the probes, and measurements on real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_lite0
from PIL import Image

from tlkit.cli.advise import advise_command, auto_recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


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
    # no val/ of its own: the size counts the images that train, and the reason names the rest
    held_out = report["evidence"]["num_val"]
    assert report["samples_per_class"] * 3 == report["evidence"]["num_train"]
    assert f"{held_out} more were held out for validation" in report["evidence"]["reason"]
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
    assert "held out" not in evidence["reason"]  # the demo has a val/ of its own
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
