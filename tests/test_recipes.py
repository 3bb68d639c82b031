"""The four recipes of the transfer-learning matrix: content, and an end-to-end run of each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tlkit.cli import main
from tlkit.recipes import list_recipes, recipe_path, recipe_summary
from tlkit.report import effective_lr, read_logs
from tlkit.strategies import create_strategy

CELLS = ("small-similar", "small-different", "large-similar", "large-different")
REFERENCES = ("CS231n", "Yosinski", "Kumar", "Li et al. 2018", "Howard & Ruder")


def _config(name: str) -> dict:
    return yaml.safe_load(recipe_path(name).read_text())


def _comment(name: str) -> str:
    lines = recipe_path(name).read_text().splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def test_one_recipe_per_cell_with_its_reasons() -> None:
    assert set(CELLS) <= set(list_recipes())
    cited = set()
    for name in CELLS:
        comment = _comment(name)
        assert recipe_summary(name).startswith(f"{name}:")
        assert "Why:" in comment
        cited |= {ref for ref in REFERENCES if ref in comment}
    assert cited == set(REFERENCES), "every reference is cited by some recipe"


def test_each_cell_gets_its_strategy() -> None:
    models = {name: _config(name)["model"] for name in CELLS}
    plans = {
        name: create_strategy(m["strategy"], **(m.get("strategy_args") or {}))
        for name, m in models.items()
    }
    assert plans["small-similar"].name == "linear_probe"
    assert plans["small-different"].name == "probe_stage"
    assert plans["small-different"].stage == -2
    assert plans["large-similar"].name in ("partial", "lp_ft", "full")
    assert plans["large-similar"].layer_decay < 1
    assert plans["large-different"].name == "full"
    assert plans["large-different"].layer_decay < 1
    # lower layers adapt at least as much on different data: never a stronger decay than on
    # similar data (bench/quadrants.py measured 0.8 as too strong even there; both use 0.9)
    assert plans["large-different"].layer_decay >= plans["large-similar"].layer_decay
    # the probe phase is short: the cosine schedule spans both phases (bench/quadrants.py)
    assert plans["large-similar"].name != "lp_ft" or plans["large-similar"].probe_epochs <= 1
    for name in ("small-similar", "small-different"):
        assert plans[name].frozen_backbone
        assert _config(name)["data"]["augment"] == "none", "frozen features are cached"
    strength = {"none": 0, "light": 1, "medium": 2, "heavy": 3}
    augment = {name: strength[_config(name)["data"]["augment"]] for name in CELLS}
    assert augment["large-different"] > augment["large-similar"] > augment["small-similar"]


@pytest.mark.parametrize("name", CELLS)
def test_recipes_show_prints_the_recipe(name: str, capsys) -> None:
    assert main(["recipes", "show", name]) == 0
    assert capsys.readouterr().out == recipe_path(name).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", CELLS)
def test_recipe_runs_end_to_end(name: str, tmp_path: Path) -> None:
    env = dict(os.environ, TLKIT_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "tlkit", "finetune", "--recipe", name]
    command += ["--epochs", "1", "--image-size", "32", "--shots", "5", "--out", "tmp"]
    command += ["--trainer.log_every_n_steps", "1"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "tmp"
    metrics = json.loads((run / "metrics.json").read_text())
    model = _config(name)["model"]
    assert metrics["strategy"]["name"] == model["strategy"]
    for key, value in (model.get("strategy_args") or {}).items():
        assert metrics["strategy"][key] == value
    assert metrics["num_train"] == 50
    assert (run / "checkpoints" / "last.ckpt").is_file()
    if name.startswith("small-"):  # solved exactly: no epochs, a cross-validated estimate
        assert metrics["solver"] == "exact"
        assert metrics["epochs"] == 0
        assert metrics["labelled"] == metrics["num_train"] + metrics["num_val"]
        expected = metrics["expected_accuracy"]
        assert expected["low"] <= expected["estimate"] <= expected["high"]
        assert metrics["test_acc"] > 0.2  # 10 classes: chance is 0.1
        return
    plan = {row["group"]: row["trains_from_epoch"] for row in metrics["plan"]}
    assert plan["head"] == 0
    series, never = effective_lr(read_logs(run / "logs"), metrics["plan"])
    assert set(never) == {group for group, start in plan.items() if start is None}
    assert "head" in series
    assert (run / "plots" / "lr.png").is_file()
    assert metrics["probe_test_acc"] > 0.2  # the exact probe was fitted first, as a baseline
    assert "exact probe" in metrics["probe_verdict"]
