"""The four recipes of the transfer-learning matrix: content, and an end-to-end run of each."""

from __future__ import annotations

import pytest
import yaml

from tlkit.cli import main
from tlkit.recipes import list_recipes, recipe_path, recipe_summary
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


def test_every_cell_names_a_shipped_recipe() -> None:
    from tlkit.recipes import CELL_RECIPES, STAGE_RECIPES, cell_recipe, is_large_cell

    for (size, similarity), name in CELL_RECIPES.items():
        assert cell_recipe(size, similarity) == name == f"{size}-{similarity}"
        assert recipe_path(name).is_file()
        assert is_large_cell(name) == (size == "large")
    assert set(STAGE_RECIPES) <= set(list_recipes())
