"""The exact probe: the same optimum as scikit-learn, no leak across folds, exact span reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from tlkit.exact import fit_exact, install_probe
from tlkit.heads import Head
from tlkit.probe import (
    L2_GRID,
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
    refit = fit_probe(x, y, fit.probe.l2)
    assert torch.allclose(fit.probe.weight, refit.weight, atol=1e-5)
    train_only = fit_probe(x[::2], y[::2], fit.probe.l2)
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
