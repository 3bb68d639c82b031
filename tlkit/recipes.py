"""Recipes: Lightning CLI YAML configs shipped with tlkit (``recipes/`` in the repository)."""

from __future__ import annotations

from pathlib import Path

from tlkit.errors import TlkitError, unknown_name

__all__ = ["list_recipes", "recipe_dir", "recipe_path", "recipe_summary"]


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
