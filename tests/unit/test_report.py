"""Tests for the run report's learning-rate plot data."""

from __future__ import annotations

import pytest

from tlkit.report import effective_lr


def test_the_lr_plot_shows_zero_while_frozen_and_leaves_out_groups_that_never_train():
    # Two steps per epoch; the logger writes the LR of every group at every step, and the
    # epoch-end rows carry the step the epoch ended at.
    rows = []
    for step in range(6):
        rows.append({"step": step, **{f"lr-SGD/{g}": 0.1 for g in ("stem", "blocks.6", "head")}})
        rows.append({"step": step, "lr-SGD/head/no_decay": 0.1})
        if step % 2 == 1:
            rows.append({"epoch": step // 2, "step": step, "val_acc": 0.5})
    plan = [
        {"group": "stem", "trains_from_epoch": None},
        {"group": "blocks.6", "trains_from_epoch": 1},
        {"group": "head", "trains_from_epoch": 0},
    ]
    series, never = effective_lr(rows, plan)
    assert never == ["stem"]
    assert set(series) == {"blocks.6", "head", "head/no_decay"}
    assert series["blocks.6"] == ([0, 1, 2, 3, 4, 5], pytest.approx([0, 0, 0.1, 0.1, 0.1, 0.1]))
    assert series["head"][1] == pytest.approx([0.1] * 6)
    # Without a plan every logged group is drawn at its optimizer LR.
    assert set(effective_lr(rows)[0]) == {"stem", "blocks.6", "head", "head/no_decay"}
