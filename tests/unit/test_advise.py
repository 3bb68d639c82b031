"""advise: the decision rule on made-up scores, the probes, and measurements on real images."""

from __future__ import annotations

import numpy as np
import pytest

from tlkit.advise import (
    LARGE_TOTAL,
    SMALL_PER_CLASS,
    Candidate,
    choose,
    decide,
    expected_accuracy,
    stratified_folds,
)
from tlkit.cli.advise import advise_command, baseline_line, next_command
from tlkit.errors import TlkitError
from tlkit.probe import CVPath
from tlkit.recipes import recipe_path

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_the_size_reason_counts_what_trains_and_names_a_held_out_val() -> None:
    scores = _candidates(0.9, (0.5, 0.6))
    held = decide(scores, 80, 10, held_out_val=200)["reason"]
    assert held.startswith("80 labelled images per class, 800 in all (under 100 per class")
    assert "200 more were held out for validation: the data has no val split" in held
    assert "held out" not in decide(scores, 80, 10)["reason"]


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


def test_a_clear_winner_keeps_its_estimate_where_each_folds_luck_would_cut_it() -> None:
    # One configuration 15 points above nine others, folds of a few images (noise 0.1): the
    # choice is never in doubt, so choosing costs nothing; the per-fold estimate still counts
    # every fold where a weaker one got lucky as optimism.
    from tlkit.advise import candidates as module

    rng = np.random.default_rng(0)
    skill = np.array([0.75] + [0.6] * 9)[:, None]
    rows = np.clip(skill + 0.1 * rng.standard_normal((10, 15)), 0, 1)
    cands = [Candidate(f"c{i}", (i,), 8, CVPath((1.0,), rows[i : i + 1], np.zeros((1, 15))))
             for i in range(10)]  # fmt: skip
    chosen = max(cands, key=lambda c: c.mean)
    assert chosen.name == "c0"
    boot = expected_accuracy(cands, chosen, labelled=60)
    assert boot["bias"] < 0.01
    module.SELECTION_BIAS = "per-fold"
    try:
        per_fold = expected_accuracy(cands, chosen, labelled=60)
    finally:
        module.SELECTION_BIAS = "bootstrap"
    assert per_fold["bias"] > 0.03


def test_a_balanced_accuracy_interval_widens_with_the_classes_of_few_images() -> None:
    # Equal folds: the binomial term alone sets the width. For a balanced accuracy it is the
    # variance of a mean of C recalls on n_c images each, from their Jeffreys posteriors.
    from scipy.stats import beta

    path = CVPath((1.0,), np.full((1, 15), 0.9), np.zeros((1, 15)), metric="balanced_accuracy")
    chosen = Candidate("top", (None,), 8, path)
    counts = [200, 80, 30, 12, 6, 3]
    tail = expected_accuracy([chosen], chosen, labelled=sum(counts), counts=counts)
    even = expected_accuracy([chosen], chosen, labelled=sum(counts), counts=[55] * 6)
    plain = expected_accuracy([chosen], chosen, labelled=sum(counts))
    oracle = sum(beta(0.9 * n + 0.5, 0.1 * n + 0.5).var() for n in counts) / 36
    half = 1.645 * oracle**0.5
    assert tail["high"] - tail["estimate"] == pytest.approx(half, abs=2e-4)
    assert tail["high"] - tail["low"] > 2 * (even["high"] - even["low"])
    # equal classes: the plain binomial variance of every labelled image, near enough
    assert even["high"] - even["low"] == pytest.approx(plain["high"] - plain["low"], rel=0.05)


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


def test_next_command_and_large_cell_baseline() -> None:
    report = {
        "recipe": "large-different",
        "cell": "large-different",
        "probe_stage": ["top", 3],
        "probe": {"name": "top+blocks.4"},
        "expected_accuracy": {"estimate": 0.9, "low": 0.85, "high": 0.95},
    }
    # the "different" recipes read the probe's stage: small-different's probe reads it,
    # large-different fine-tunes up to it; large-similar (the top features) takes none
    stage = "--model.strategy_args.stage '[\"top\", 3]'"
    large = "tlkit finetune --recipe large-different --data DATA"
    assert next_command(report, "DATA") == f"{large} {stage}"
    small = {**report, "recipe": "small-different", "cell": "small-different"}
    assert next_command(small, "DATA").endswith(stage)
    similar = {**report, "recipe": "large-similar", "cell": "large-similar"}
    assert next_command(similar, "DATA") == "tlkit finetune --recipe large-similar --data DATA"
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


def test_the_plan_names_what_to_run() -> None:
    from tlkit.advise import plan_from

    report = {
        "cell": "small-different",
        "recipe": "small-different",
        "probe_stage": 3,
        "probe": {"name": "blocks.3"},
        "expected_accuracy": {"estimate": 0.9, "low": 0.85, "high": 0.95, "bias": 0.01},
    }
    plan = plan_from(report)
    assert (plan.recipe, plan.stage, plan.probe, plan.probe_first) == (
        "small-different",
        3,
        "blocks.3",
        False,
    )
    large = plan_from({**report, "cell": "large-different", "recipe": "large-different"})
    assert large.stage == 3  # fine-tuned up to the probe's stage
    assert large.probe_first
    similar = plan_from({**report, "cell": "large-similar", "recipe": "large-similar"})
    assert similar.stage is None  # the whole network: its strategy reads no stage


def test_the_run_carries_advises_estimate_to_the_scaling_its_fit_chose() -> None:
    from tlkit.exact import ExactFit

    def option(scale: str, level: float) -> Candidate:
        folds = np.full((1, 15), level) + 0.01 * np.sin(np.arange(15))
        return Candidate("top", (None,), 8, CVPath((1.0,), folds, np.zeros((1, 15)), scale=scale))

    feature, wider = option("feature", 0.70), option("global", 0.75)
    fit = ExactFit(None, wider, 200, None, 5, None, (feature, wider))
    advised = {"estimate": 0.68, "low": 0.62, "high": 0.74, "bias": 0.02, "metric": "accuracy"}
    probe = {"stage": None, "scale": "feature", "balance": "none"}
    carried = fit.expected_after(advised, probe, tested=500)
    own = expected_accuracy([feature, wider], wider, 200, 500, 0.2)
    # moved by the 5 points the global scaling won on the same folds, less that choice's bias
    assert carried["estimate"] == pytest.approx(0.68 + 0.05 - own["bias"], abs=2e-3)
    assert carried["high"] - carried["low"] >= 0.12 - 1e-9  # never narrower than advise's
    # another stage than advise's: nothing to carry over
    other = fit.expected_after(advised, {**probe, "stage": 3}, tested=500)
    assert other == advised
