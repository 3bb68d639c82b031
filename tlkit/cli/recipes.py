"""``tlkit recipes``: list the shipped recipes or print one."""

from __future__ import annotations

from collections.abc import Sequence

from tlkit.errors import TlkitError

__all__ = ["recipes_command"]


def recipes_command(argv: Sequence[str]) -> int:
    """``tlkit recipes [list | show NAME]``.

    Args:
        argv: Command-line arguments after ``recipes``.

    Returns:
        The exit code (0).

    Raises:
        TlkitError: For an unknown subcommand or recipe.
    """
    from tlkit.recipes import list_recipes, recipe_path, recipe_summary

    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: tlkit recipes [list | show NAME]\n\nexample: tlkit recipes show small-similar"
        )
        return 0
    if len(argv) >= 2 and argv[0] == "show":
        print(recipe_path(argv[1]).read_text(), end="")
        return 0
    if argv and argv[0] != "list":
        raise TlkitError(
            f"unknown recipes command {argv[0]!r}; use `tlkit recipes [list | show NAME]`"
        )
    for name in list_recipes():
        print(f"{name:22s} {recipe_summary(name)}")
    return 0
