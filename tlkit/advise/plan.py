"""What to run on a measured dataset: the recipe, its probe stage, the expected accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tlkit.recipes import STAGE_RECIPES, is_large_cell

__all__ = ["Plan", "plan_from"]


@dataclass(frozen=True)
class Plan:
    """The run advise recommends for a dataset.

    Attributes:
        recipe: The recipe to fine-tune with (the measured cell's).
        cell: The cell of the transfer-learning matrix, e.g. ``small-different``.
        probe: Name of the chosen frozen features, e.g. ``top`` or ``blocks.4``.
        probe_stage: The chosen features as ``probe_stage``'s ``stage`` setting (``None``: the
            top features alone).
        expected_accuracy: ``estimate``, ``low``, ``high`` and ``bias`` of the chosen probe.
    """

    recipe: str
    cell: str
    probe: str
    probe_stage: int | list[int | str] | None
    expected_accuracy: dict[str, float]

    @property
    def stage(self) -> int | list[int | str] | None:
        """The stage the recipe's strategy is given (``None``: the recipe's own setting)."""
        return self.probe_stage if self.recipe in STAGE_RECIPES else None

    @property
    def probe_first(self) -> bool:
        """Whether the run fine-tunes, with the exact probe fitted first as the baseline."""
        return is_large_cell(self.recipe)


def plan_from(report: dict[str, Any]) -> Plan:
    """The :class:`Plan` of an advise report (from :func:`~tlkit.advise.measure`).

    Args:
        report: The report, or its JSON form (``tlkit advise --json``).

    Returns:
        The plan.
    """
    return Plan(
        recipe=report["recipe"],
        cell=report["cell"],
        probe=report["probe"]["name"],
        probe_stage=report["probe_stage"],
        expected_accuracy=report["expected_accuracy"],
    )
