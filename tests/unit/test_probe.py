"""The exact probe: the same optimum as scikit-learn, no leak across folds, exact span reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tlkit.errors import TlkitError
from tlkit.exact import fit_exact, install_probe
from tlkit.heads import Head
from tlkit.probe import (
    L2_GRID,
    SCALES,
    cv_path,
    cv_rows,
    fit_logistic,
    fit_probe,
    rescale_l2,
    standardizer,
    stratified_folds,
)


def _blobs(n_per_class: int, dims: int, classes: int = 3, sep: float = 3.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centres = sep * rng.normal(size=(classes, dims)) / np.sqrt(dims)
    x = rng.normal(size=(len(labels), dims)) + centres[labels]
    return torch.as_tensor(x), torch.as_tensor(labels)


@pytest.mark.parametrize("l2", [1.0, 0.01])
def test_logistic_fit_matches_scikit_learn(l2: float) -> None:
    x, y = _blobs(30, 8, sep=2.0)
    weight, bias = fit_logistic(x, y, 3, l2)
    # scikit-learn minimises 0.5 ||W||^2 + C * sum CE: the same optimum when C = 1 / (l2 n).
    oracle = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(x, y)
    # softmax is shift-invariant: compare centred weights and biases
    ours = weight - weight.mean(0)
    theirs = torch.as_tensor(oracle.coef_) - torch.as_tensor(oracle.coef_).mean(0)
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert torch.allclose(
        bias - bias.mean(), torch.as_tensor(oracle.intercept_ - oracle.intercept_.mean()), atol=1e-3
    )


def test_global_scaling_is_scikit_learn_on_the_raw_features() -> None:
    x, y = _blobs(30, 8, sep=2.0)
    x = x * torch.logspace(-2, 1, 8, dtype=x.dtype)  # features of very different spread
    l2 = 0.05
    probe = fit_probe(x, y, l2, 3, scale="global")
    assert torch.unique(probe.std).numel() == 1
    rms = float(x.std(0, unbiased=False).square().mean().sqrt())
    # one divisor s for every feature: the penalty on raw weights is s^2 times larger
    oracle = LogisticRegression(C=1.0 / (l2 * len(y) * rms**2), tol=1e-10, max_iter=10_000)
    theirs = torch.as_tensor(oracle.fit(x, y).decision_function(x))
    ours = probe.logits(x)
    assert torch.allclose(ours - ours.mean(1, keepdim=True), theirs - theirs.mean(1, keepdim=True),
                          atol=1e-3)  # fmt: skip
    per_feature = fit_probe(x, y, l2, 3)  # the same data, each feature to unit spread
    assert not torch.allclose(per_feature.logits(x), ours, atol=1e-2)


def test_concatenated_stages_keep_per_feature_scaling() -> None:
    x, y = _blobs(16, 12, sep=3.0)
    features = {"train": (x, y), "val": (x[:0], y[:0])}
    assert fit_exact(features, "top+stage 3", (None, 3), 3).probe.scale == "feature"
    one = fit_exact(features, "top", (None,), 3)
    assert set(one.record(None)["scale_options"]) == set(SCALES)
    assert fit_exact(features, "top", (None,), 3, scales=("global",)).probe.scale == "global"
    with pytest.raises(TlkitError, match="unknown probe scale"):
        fit_probe(x, y, 0.1, scale="minmax")


def test_span_reduction_is_exact_when_features_outnumber_samples() -> None:
    x, y = _blobs(8, 200, sep=4.0)  # 24 rows, 200 features: solved in a 24-dim basis
    probe = fit_probe(x, y, 0.1)
    mean, std = standardizer(x)
    weight, bias = fit_logistic((x - mean) / std, y, 3, 0.1, max_iter=2000, tolerance_grad=1e-9)
    assert torch.allclose(probe.weight, weight, atol=1e-4)
    assert torch.allclose(probe.bias, bias, atol=1e-4)


def test_cross_validation_separates_blobs_and_does_not_leak() -> None:
    x, y = _blobs(20, 30, sep=6.0)
    splits = stratified_folds(y.numpy(), 5, 2, seed=0)
    assert cv_path(x, y.numpy(), splits).folds().mean() > 0.95
    rng = np.random.default_rng(1)
    noise = torch.as_tensor(rng.normal(size=(60, 500)))  # more dimensions than samples
    assert cv_path(noise, y.numpy(), splits).folds().mean() < 0.55


def test_the_path_stops_once_weaker_strengths_stop_helping() -> None:
    x, y = _blobs(20, 30, sep=6.0)
    splits = stratified_folds(y.numpy(), 5, 1, seed=0)
    full = cv_path(x, y.numpy(), splits, patience=len(L2_GRID))
    short = cv_path(x, y.numpy(), splits, patience=1)
    assert len(full.l2) == len(L2_GRID)
    assert len(short.l2) < len(L2_GRID)
    assert short.folds().mean() == pytest.approx(full.accuracy[: len(short.l2)].mean(1).max())


def test_the_path_is_the_same_bit_for_bit_on_any_number_of_threads() -> None:
    x, y = _blobs(100, 300, sep=3.0)  # 240 training rows a fold: large enough to share out
    splits = stratified_folds(y.numpy(), 5, 1, seed=0)
    threads = torch.get_num_threads()
    try:
        paths = []
        for count in (1, 3):
            torch.set_num_threads(count)
            paths.append(cv_path(x, y.numpy(), splits))
            assert torch.get_num_threads() == count  # what the run had is given back
    finally:
        torch.set_num_threads(threads)
    assert paths[0].l2 == paths[1].l2
    assert np.array_equal(paths[0].accuracy, paths[1].accuracy)
    assert np.array_equal(paths[0].loss, paths[1].loss)


@pytest.mark.parametrize("standardize", [True, False])
def test_a_head_computes_what_the_probe_computes(standardize: bool) -> None:
    x, y = _blobs(10, 16)
    probe = fit_probe(x * 50 + 7, y, 0.1)  # badly scaled features: standardisation matters
    head = Head(16, 3, standardize=standardize)
    install_probe(head, probe)
    head.eval()
    with torch.no_grad():
        logits = head((x * 50 + 7).float()).double()
    assert torch.allclose(logits, probe.logits(x * 50 + 7), atol=1e-3)


def test_the_exact_fit_uses_every_label_and_scores_val_on_a_train_only_fit() -> None:
    x, y = _blobs(16, 12, sep=3.0)
    features = {"train": (x[::2], y[::2]), "val": (x[1::2], y[1::2])}
    fit = fit_exact(features, "top", (None,), 3)
    assert fit.labelled == 48
    assert fit.probe.scale in SCALES  # one stage's features: chosen on the folds
    refit = fit_probe(x, y, fit.probe.l2, scale=fit.probe.scale)
    assert torch.allclose(fit.probe.weight, refit.weight, atol=1e-5)
    # the same balance of loss and penalty on half the rows: twice the strength
    train_only = fit_probe(x[::2], y[::2], 2 * fit.probe.l2, scale=fit.probe.scale)
    assert fit.val_acc == train_only.accuracy(x[1::2], y[1::2])
    record = fit.record(tested=100)
    assert record["labelled"] == 48
    assert record["expected_accuracy"]["low"] < record["cv_acc"] <= 1.0


def test_past_the_limit_the_folds_use_a_stratified_subsample_and_the_strength_is_rescaled():
    labels = np.repeat(np.arange(4), [100, 300, 50, 550])
    rows = cv_rows(labels, seed=0, limit=200)
    assert len(rows) == pytest.approx(200, abs=4)
    counts = np.bincount(labels[rows])
    assert counts.tolist() == pytest.approx([20, 60, 10, 110], abs=1)
    assert cv_rows(labels, seed=0, limit=5000).tolist() == list(range(1000))
    # the same penalty per total loss: C = 1 / (l2 n) unchanged
    assert rescale_l2(0.1, 200, 1000) * 1000 == pytest.approx(0.1 * 200)


def _long_tail(counts: tuple[int, ...], dims: int = 6, sep: float = 1.6, seed: int = 0):
    """Overlapping Gaussian classes with ``counts`` images each (and the generator's centres)."""
    rng = np.random.default_rng(seed)
    centres = sep * rng.normal(size=(len(counts), dims)) / np.sqrt(dims) * 2
    labels = np.repeat(np.arange(len(counts)), counts)
    x = rng.normal(size=(len(labels), dims)) + centres[labels]
    return torch.as_tensor(x), torch.as_tensor(labels), centres


@pytest.mark.parametrize(("name", "power"), [("balanced", 1.0), ("sqrt", 0.5)])
def test_class_weighted_fit_matches_scikit_learn_class_weight(name: str, power: float) -> None:
    from tlkit.balance import balance_named, class_weights

    x, y, _ = _long_tail((60, 20, 5))
    l2 = 0.05
    weight, _ = fit_logistic(x, y, 3, l2, weight=class_weights(y, 3, power))
    counts = np.bincount(y.numpy())
    per_class = len(y) / (3 * counts) if name == "balanced" else counts**-power
    given = "balanced" if name == "balanced" else dict(enumerate(per_class))
    # scikit-learn minimises 0.5 ||W||^2 + C * sum w_i CE_i; ours divides the sum by sum w_i.
    total = float((per_class * counts).sum())
    oracle = LogisticRegression(C=1.0 / (l2 * total), class_weight=given, tol=1e-10, max_iter=9999)
    oracle.fit(x, y)
    ours = weight - weight.mean(0)
    theirs = torch.as_tensor(oracle.coef_) - torch.as_tensor(oracle.coef_).mean(0)
    assert torch.allclose(ours, theirs, atol=1e-3)
    probe = fit_probe(x, y, l2, 3, balance_named(name))
    assert probe.balance == name


def test_logit_adjustment_subtracts_the_log_class_frequencies() -> None:
    from tlkit.balance import balance_named

    x, y, _ = _long_tail((60, 20, 5))
    plain = fit_probe(x, y, 0.05, 3)
    adjusted = fit_probe(x, y, 0.05, 3, balance_named("logit-adjusted"))
    prior = torch.as_tensor(np.bincount(y.numpy()) / len(y)).log()
    assert torch.allclose(adjusted.bias, plain.bias - prior)
    assert torch.equal(adjusted.weight, plain.weight)
    # rarer classes are predicted more often once adjusted
    x_test, _, _ = _long_tail((200, 200, 200), seed=5)
    counts_plain = torch.bincount(plain.logits(x_test).argmax(1), minlength=3)
    counts_adj = torch.bincount(adjusted.logits(x_test).argmax(1), minlength=3)
    assert counts_adj[2] > counts_plain[2]


def test_balanced_scoring_only_on_imbalanced_labels() -> None:
    from tlkit.balance import BALANCES, balanced_accuracy, balances_for, imbalance_ratio

    assert balances_for(np.repeat([0, 1, 2], [10, 10, 11])) == ((BALANCES[0],), False)
    assert balances_for(np.repeat([0, 1, 2], [100, 10, 3])) == (BALANCES, True)
    assert imbalance_ratio(np.repeat([0, 1, 2], [100, 10, 3])) == pytest.approx(100 / 3)
    predicted, labels = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([0, 0, 0, 1, 1])
    assert balanced_accuracy(predicted, labels) == pytest.approx((1.0 + 0.5) / 2)


def test_exact_fit_on_a_long_tail_is_chosen_and_predicted_on_balanced_accuracy() -> None:
    from sklearn.metrics import balanced_accuracy_score

    x, y, centres = _long_tail((200, 80, 30, 12, 6, 3), seed=0)
    rng = np.random.default_rng(9)
    test_y = np.repeat(np.arange(6), 300)  # a balanced test set from the same classes
    test_x = torch.as_tensor(rng.normal(size=(len(test_y), x.shape[1])) + centres[test_y])
    features = {"train": (x, y), "val": (x[:0], y[:0])}
    fit = fit_exact(features, "top", (None,), 6)
    record = fit.record(len(test_y))
    assert record["cv_metric"] == "balanced_accuracy"
    assert record["expected_accuracy"]["metric"] == "balanced_accuracy"
    assert set(record["balance_options"]) == {"none", "sqrt", "balanced", "logit-adjusted"}
    assert record["balance"] != "none"
    ours = balanced_accuracy_score(test_y, fit.probe.logits(test_x).argmax(1).numpy())
    plain = LogisticRegression(C=1.0 / (fit.probe.l2 * len(y)), max_iter=5000).fit(x, y)
    unweighted = balanced_accuracy_score(test_y, plain.predict(test_x))
    assert ours > unweighted + 0.02
    expected = record["expected_accuracy"]
    assert expected["low"] <= ours <= expected["high"]
    # the training mix's accuracy is reported too, and it is what the old estimate promised
    assert record["cv_plain_acc"] > record["cv_acc"]
