"""Tests for tlkit.schedules: LR multipliers as pure functions of the optimizer step."""

from __future__ import annotations

import itertools

import pytest

from tlkit.errors import TlkitError
from tlkit.schedules import constant, cosine, exponential, make_schedule, with_warmup


def test_constant_is_one_everywhere():
    assert [constant(i, 10) for i in (0, 5, 10, 50)] == [1.0] * 4


@pytest.mark.parametrize("final", [0.0, 0.1])
def test_cosine_runs_from_one_to_final_monotonically(final):
    total = 40
    values = [cosine(i, total, final) for i in range(total + 1)]
    assert values[0] == 1.0
    assert values[-1] == pytest.approx(final, abs=1e-12)
    assert values[total // 2] == pytest.approx((1 + final) / 2)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert cosine(total + 7, total, final) == pytest.approx(final, abs=1e-12)


def test_warmup_ramps_linearly_then_hands_over():
    warmup, total = 4, 20
    schedule = with_warmup(lambda i, t: cosine(i, t, 0.0), warmup)
    ramp = [schedule(i, total) for i in range(warmup)]
    assert ramp == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5])
    assert schedule(warmup, total) == 1.0
    assert schedule(total, total) == pytest.approx(0.0, abs=1e-12)
    after = [schedule(i, total) for i in range(warmup, total + 1)]
    assert all(a > b for a, b in itertools.pairwise(after))


def test_make_schedule_warmup_counts_epochs_in_steps():
    schedule = make_schedule("constant", steps_per_epoch=10, warmup_epochs=0.5)
    assert [schedule(i, 100) for i in range(6)] == pytest.approx(
        [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1]
    )
    assert make_schedule("constant", steps_per_epoch=10)(0, 100) == 1.0


def test_exponential_decays_by_gamma_each_epoch():
    spe, gamma = 5, 0.8
    schedule = make_schedule("exponential", steps_per_epoch=spe, gamma=gamma)
    for epoch in range(6):
        assert schedule(epoch * spe, 30) == pytest.approx(gamma**epoch)
    within = [schedule(i, 30) for i in range(spe + 1)]
    assert all(a > b for a, b in itertools.pairwise(within))
    assert exponential(3, 10, gamma=0.5, steps_per_epoch=1) == pytest.approx(0.125)
    assert make_schedule("exponential", steps_per_epoch=1)(1, 10) == pytest.approx(0.9)


def test_step_is_a_staircase_cut_every_step_epochs():
    spe = 4
    schedule = make_schedule("step", steps_per_epoch=spe, gamma=0.1, step_epochs=2)
    values = [schedule(i, 100) for i in range(3 * 2 * spe)]
    assert values[:8] == [1.0] * 8
    assert values[8:16] == pytest.approx([0.1] * 8)
    assert values[16:24] == pytest.approx([0.01] * 8)
    assert make_schedule("step", steps_per_epoch=1, step_epochs=10)(10, 100) == pytest.approx(0.1)


def test_make_schedule_rejects_unknown_names_with_a_suggestion():
    with pytest.raises(TlkitError, match=r"unknown scheduler 'cosin'.*did you mean: cosine"):
        make_schedule("cosin", steps_per_epoch=10)
    with pytest.raises(TlkitError, match="warmup_epochs"):
        make_schedule("cosine", steps_per_epoch=10, warmup_epochs=-1)
