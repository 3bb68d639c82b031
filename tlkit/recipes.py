"""Recipes: Lightning CLI YAML configs shipped with tlkit (``recipes/`` in the repository)."""

from __future__ import annotations

from pathlib import Path

from tlkit.errors import TlkitError, unknown_name

__all__ = [
    "CELL_RECIPES",
    "STAGE_RECIPES",
    "cell_recipe",
    "is_large_cell",
    "list_recipes",
    "recipe_dir",
    "recipe_path",
    "recipe_summary",
]

#: The shipped recipe of each cell of the transfer-learning matrix, keyed by (size, similarity).
CELL_RECIPES = {
    ("small", "similar"): "small-similar",
    ("small", "different"): "small-different",
    ("large", "similar"): "large-similar",
    ("large", "different"): "large-different",
}
#: Recipes whose strategy reads the probe stage advise measures (``strategy_args.stage``).
STAGE_RECIPES = ("small-different", "large-different")


def cell_recipe(size: str, similarity: str) -> str:
    """The recipe of a matrix cell.

    Args:
        size: ``small`` or ``large``.
        similarity: ``similar`` or ``different``.

    Returns:
        The recipe name, e.g. ``small-different``.
    """
    return CELL_RECIPES[(size, similarity)]


def is_large_cell(recipe: str) -> bool:
    """Whether ``recipe`` is a large cell's, or a variant named after one (``large-*``): those
    fine-tune, with the exact probe as the baseline to beat."""
    return recipe.startswith("large-")


def recipe_dir() -> Path:
    """The recipes folder: in the installed package (wheel), else the checkout's ``recipes/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_recipes", here.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise TlkitError("tlkit's recipes folder is missing; reinstall tlkit (pip install tlkit)")


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """Path of a recipe given its name, or of a YAML file given its path."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    path = recipe_dir() / f"{name}.yaml"
    if not path.is_file():
        raise unknown_name("recipe", name, list_recipes(), "list them with `tlkit recipes`")
    return path


def recipe_summary(name: str) -> str:
    """The first comment line of a recipe (its one-line description)."""
    for line in recipe_path(name).read_text().splitlines():
        text = line.strip()
        if text.startswith("#") and text.lstrip("# ").strip():
            return text.lstrip("# ").strip()
    return ""
