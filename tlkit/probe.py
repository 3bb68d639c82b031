"""Exact linear probes on frozen features: the head of every frozen-backbone cell.

A head on frozen, cached features is a small convex problem, so it is solved, not trained:
standardised features (per feature or globally, :data:`SCALES`), multinomial logistic
regression minimised to convergence by full-batch L-BFGS, its L2 strength chosen by repeated
stratified k-fold cross-validation over *every* labelled image, then refitted on all of them
(the standard fixed-feature protocol, Kornblith et al. 2019).

Everything here is a pure function of tensors, deterministic, and independent of Lightning:

* :func:`stratified_folds`: repeated stratified k-fold splits;
* :func:`fit_logistic`: one L2-regularised multinomial logistic regression;
* :func:`cv_path`: held-out accuracy of the whole L2 path on every split;
* :func:`fit_probe`: choose the strength on the folds, refit on all, return a :class:`Probe`.

The objective is ``mean cross-entropy + l2 / 2 * ||W||^2`` (bias not penalised); scikit-learn's
``C`` is ``1 / (l2 * n)``. When there are fewer training rows than features the problem is
solved in the row space of the training features (an SVD), which is exact for an L2 penalty:
the solution lies in that span.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from threadpoolctl import ThreadpoolController

from tlkit.balance import NO_BALANCE, Balance, balanced_accuracy, class_weights, log_prior
from tlkit.errors import TlkitError

__all__ = [
    "L2_GRID",
    "MAX_CV_IMAGES",
    "SCALES",
    "CVPath",
    "Probe",
    "cv_path",
    "cv_repeats",
    "cv_rows",
    "fit_logistic",
    "fit_probe",
    "rescale_l2",
    "scales_for",
    "standardizer",
    "stratified_folds",
]

#: Most labelled images the folds are drawn from (a stratified subsample beyond it).
MAX_CV_IMAGES = 2000
#: L2 strengths tried, strongest first (each fit warm-starts the next).
L2_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(1, -4, 11))

Splits = Sequence[tuple[np.ndarray, np.ndarray]]
#: Solver settings while scoring: accuracy is settled long before the last digits of the loss.
_LOOSE = {"max_iter": 100, "tolerance_grad": 1e-4}
#: Entries of a split's (span-reduced) training matrix below which the folds are solved as one
#: problem (:class:`Folds`: 100 labelled images, 1.3x faster than one by one; at 300 images,
#: where the products dominate, 0.9x).
_JOINT_SIZE = 2**15
#: Entries of a split's (span-reduced) training matrix from which folds are solved side by side.
_PARALLEL_SIZE = 2**19


def stratified_folds(
    labels: Sequence[int] | np.ndarray, folds: int = 5, repeats: int = 3, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Repeated stratified k-fold splits.

    A class with a single image still gets a fold: held out, it cannot be predicted, so the
    estimate is pessimistic for one-shot classes rather than impossible.

    Args:
        labels: Class of each sample.
        folds: Folds per repeat (lowered to the smallest class count, but at least 2).
        repeats: Independent shuffles.
        seed: Seed of the shuffles.

    Returns:
        ``(train_indices, test_indices)`` pairs, ``folds * repeats`` of them.

    Raises:
        TlkitError: With fewer than two labelled images in all.
    """
    y = np.asarray(labels)
    counts = Counter(y.tolist())
    if len(y) < 2:
        raise TlkitError("need at least 2 labelled images to cross-validate a probe; add images")
    k = max(2, min(folds, min(counts.values())))
    rng = np.random.default_rng(seed)
    splits = []
    for _ in range(repeats):
        assignment = np.empty(len(y), dtype=np.int64)
        for label in sorted(counts):
            members = rng.permutation(np.flatnonzero(y == label))
            assignment[members] = (np.arange(len(members)) + rng.integers(k)) % k
        for fold in range(k):
            train, test = np.flatnonzero(assignment != fold), np.flatnonzero(assignment == fold)
            if len(train) and len(test):
                splits.append((train, test))
    return splits


@contextlib.contextmanager
def _one_thread() -> Iterator[int]:
    """One thread per solve, torch's default kernels: thousands of small solves are fastest so,
    and results are the same bit for bit on every run. Many threads on small matrices mostly wait
    on each other (far worse on a busy CPU), and the deterministic mode that recipes turn on for
    training (``use_deterministic_algorithms``) slows these kernels threefold without changing
    them on one CPU thread. Yields the thread count torch had: independent solves can run that
    many at once, each on its own thread (:func:`cv_path`)."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextlib.contextmanager
def _solver_map(threads: int, size: int) -> Iterator[Callable]:
    """``map`` over independent solves: on ``threads`` threads at once when each solve's training
    matrix has at least :data:`_PARALLEL_SIZE` entries (``size``); smaller solves spend their
    time in the solver's bookkeeping, which holds the GIL, and run faster one after another
    (240 x 240: 1.7x slower on two threads; 800 x 800: 1.2x faster; 1600 x 1280: 2x)."""
    if threads < 2 or size < _PARALLEL_SIZE:
        yield map
        return
    with ThreadPoolExecutor(threads) as pool:
        yield pool.map


def cv_rows(
    labels: Sequence[int] | np.ndarray, seed: int, limit: int = MAX_CV_IMAGES
) -> np.ndarray:
    """The rows the folds are drawn from: all of them, or a stratified subsample of ``limit``.

    Past a few thousand images the chosen strength barely moves and each fit costs more; the
    probe is then refitted on every row with the strength rescaled by :func:`rescale_l2`.
    """
    y = np.asarray(labels)
    if len(y) <= limit:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        picked.append(members[: max(2, round(limit * len(members) / len(y)))])
    return np.sort(np.concatenate(picked))


def rescale_l2(l2: float, chosen_on: int, fitted_on: int) -> float:
    """The strength for ``fitted_on`` rows that matches ``l2`` chosen on ``chosen_on`` rows.

    The objective averages the loss over rows, so the same total-loss-to-penalty balance (a
    fixed ``C`` in scikit-learn's terms) needs ``l2 * chosen_on / fitted_on``.
    """
    return l2 * chosen_on / max(fitted_on, 1)


def cv_repeats(n: int) -> int:
    """Repeats of the k-fold for ``n`` labelled images: fewer as the data grows (the noise of
    the estimate shrinks, the cost grows): 3 up to 400, 2 up to 1,000, then 1."""
    return 3 if n <= 400 else (2 if n <= 1000 else 1)


#: How the probe scales its features before the L2-penalised fit: ``feature`` divides each
#: feature by its own standard deviation (every feature penalised alike); ``global`` divides
#: them all by one number, their root-mean-square deviation, so the backbone's own feature
#: scales stay (a feature with little spread is penalised more, as on raw features).
SCALES = ("feature", "global")


def scales_for(blocks: int) -> tuple[str, ...]:
    """The scalings the cross-validation chooses among for features read from ``blocks``
    stages: both for one stage (on the top features +1.5 to +2.4 points of balanced accuracy
    over per-feature scaling alone, level on advise's stages; bench/RESULTS.md, "feature
    scaling"), per feature alone for a concatenation, whose stages differ by orders of magnitude."""
    return SCALES if blocks == 1 else ("feature",)


def standardizer(x: torch.Tensor, scale: str = "feature") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean of ``x`` and the divisor of each feature (see :data:`SCALES`);
    constant features keep scale 1."""
    if scale not in SCALES:
        raise TlkitError(f"unknown probe scale '{scale}'; choose one of {', '.join(SCALES)}")
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    if scale == "global":
        rms = std.square().mean().sqrt().clamp_min(1e-12)
        return mean, torch.full_like(std, float(rms))
    std = torch.where(std < 1e-6 * std.max().clamp_min(1e-12), torch.ones_like(std), std)
    return mean, std


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    l2: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 300,
    tolerance_grad: float = 1e-6,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean CE(x W^T + b, y) + l2/2 ||W||^2`` by full-batch L-BFGS.

    scipy's compiled L-BFGS-B drives the iterations on the written-out loss and gradient, with
    BLAS on one thread. Thousands of these small solves (advise's candidates, every strength of
    every fold) cost mostly the solver's own bookkeeping, which torch's Python L-BFGS does
    many times slower (``bench/solver.py``).

    Args:
        x: ``(N, D)`` features (already standardised), float64.
        y: ``N`` class indices.
        classes: Number of classes.
        l2: L2 strength on the weights (> 0).
        init: Starting ``(weight, bias)`` (a warm start along an L2 path).
        max_iter: L-BFGS iteration cap.
        tolerance_grad: Stop when no gradient entry is larger.
        weight: Per-class loss weights (:func:`class_weights`); the mean becomes the weighted
            mean.

    Returns:
        ``weight`` ``(classes, D)`` and ``bias`` ``(classes,)``.
    """
    folds = Folds([x], [y], classes, [weight])
    theta = folds.solve(l2, None if init is None else folds.pack([init]), max_iter, tolerance_grad)
    return folds.unpack(theta)[0]


class Folds:
    """Several logistic problems (the folds of a cross-validation, at one strength) solved as
    one: their losses summed, their parameters side by side, rows and features zero-padded to
    the largest (a padded row weighs nothing, a padded feature's weight stays zero).

    The summed problem is separable, so its minimum is every fold's own minimum; one solver run
    over all folds pays the solver's per-iteration cost once instead of once per fold, which
    is most of the cost of small folds (``bench/solver.py``).

    Args:
        xs: Each fold's ``(n_f, d_f)`` training features (standardised).
        ys: Each fold's class indices.
        classes: Number of classes.
        weights: Each fold's per-class loss weights, or ``None`` entries (plain mean).
    """

    def __init__(
        self,
        xs: Sequence[torch.Tensor],
        ys: Sequence[torch.Tensor],
        classes: int,
        weights: Sequence[torch.Tensor | None],
    ) -> None:
        rows, width = max(len(x) for x in xs), max(x.shape[1] for x in xs)
        self.shapes = [tuple(x.shape) for x in xs]
        self.classes = classes
        self.x = np.zeros((len(xs), rows, width))
        self.target = np.zeros((len(xs), rows, classes))
        self.mass = np.zeros((len(xs), rows, 1))
        for f, (x, y, weight) in enumerate(zip(xs, ys, weights, strict=True)):
            n, d = x.shape
            self.x[f, :n, :d] = x.double().numpy()
            self.target[f, np.arange(n), y.numpy()] = 1.0
            mass = np.ones(n) if weight is None else weight.double()[y].numpy()
            self.mass[f, :n, 0] = mass / mass.sum()

    @property
    def _size(self) -> int:
        return self.x.shape[0] * self.classes * self.x.shape[2]

    def pack(self, states: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        """Per-fold ``(weight, bias)`` as the solver's one parameter vector."""
        w = np.zeros((self.x.shape[0], self.classes, self.x.shape[2]))
        for f, (weight, _) in enumerate(states):
            w[f, :, : weight.shape[1]] = weight.detach().double().numpy()
        bias = [b.detach().double().numpy() for _, b in states]
        return np.concatenate([w.reshape(-1), np.concatenate(bias)])

    def unpack(self, theta: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The solver's vector as per-fold ``(weight (classes, d_f), bias (classes,))``."""
        w = theta[: self._size].reshape(self.x.shape[0], self.classes, self.x.shape[2])
        b = theta[self._size :].reshape(-1, self.classes)
        return [
            (torch.from_numpy(w[f, :, :d].copy()), torch.from_numpy(b[f].copy()))
            for f, (_, d) in enumerate(self.shapes)
        ]

    def solve(
        self,
        l2: float,
        start: np.ndarray | None = None,
        max_iter: int = 300,
        tolerance_grad: float = 1e-6,
    ) -> np.ndarray:
        """Minimise every fold's ``mean CE + l2/2 ||W||^2`` by L-BFGS-B from ``start`` (zeros
        when ``None``); stops when no gradient entry of any fold is above ``tolerance_grad``.
        Returns the parameter vector (:meth:`unpack` reads it)."""
        if start is None:
            start = np.zeros(self._size + self.x.shape[0] * self.classes)
        options = {"maxiter": max_iter, "gtol": tolerance_grad, "ftol": 1e-10, "maxcor": 20}
        with _blas_limit():
            result = scipy.optimize.minimize(
                _loss_and_grad,
                start,
                args=(self.x, self.target, self.mass, l2),
                jac=True,
                method="L-BFGS-B",
                options=options,
            )
        return np.array(result.x, dtype=np.float64)


def _loss_and_grad(
    theta: np.ndarray, x: np.ndarray, target: np.ndarray, mass: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """The summed weighted cross-entropy plus ``l2/2 ||W||^2`` of ``theta`` (every fold's ``W``,
    then every fold's ``b``, flattened) for folds ``x`` ``(F, n, d)``, and its gradient."""
    folds, _, d = x.shape
    classes = target.shape[2]
    size = folds * classes * d
    w, b = theta[:size].reshape(folds, classes, d), theta[size:].reshape(folds, 1, classes)
    z = x @ w.transpose(0, 2, 1) + b
    z -= z.max(axis=2, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=2, keepdims=True)
    loss = -(mass * (z - np.log(total)) * target).sum() + 0.5 * l2 * (w * w).sum()
    residual = (e / total - target) * mass
    grad = np.empty_like(theta)
    grad[:size] = (residual.transpose(0, 2, 1) @ x + l2 * w).reshape(-1)
    grad[size:] = residual.sum(axis=1).reshape(-1)
    return float(loss), grad


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def _blas_limit() -> contextlib.AbstractContextManager:
    """numpy's and scipy's BLAS on one thread: waking its worker threads for every small
    product costs 25x the products themselves, and one thread gives the same bits every run."""
    return _blas().limit(limits=1, user_api="blas")


def _reduce(x_train: torch.Tensor) -> torch.Tensor | None:
    """An orthonormal basis ``(D, r)`` of the training rows' span when ``r < D``, else ``None``."""
    n, d = x_train.shape
    if n >= d:
        return None
    _, s, vh = torch.linalg.svd(x_train, full_matrices=False)
    keep = s > s.max().clamp_min(1e-12) * 1e-9
    return vh[keep].T


def _prepare(
    x: torch.Tensor, train: np.ndarray, test: np.ndarray, scale: str = "feature"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's standardised (on its training part) and span-reduced train and test rows."""
    train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
    mean, std = standardizer(x[train_t], scale)
    x_train, x_test = (x[train_t] - mean) / std, (x[test_t] - mean) / std
    basis = _reduce(x_train)
    if basis is not None:
        x_train, x_test = x_train @ basis, x_test @ basis
    return x_train, x_test


@dataclass(frozen=True)
class CVPath:
    """Held-out scores of an L2 path on every split.

    Attributes:
        l2: The strengths, strongest first.
        accuracy: ``(len(l2), splits)`` held-out score the strength is chosen on: accuracy, or
            balanced accuracy (mean recall over classes) when ``metric`` says so.
        loss: ``(len(l2), splits)`` held-out mean cross-entropy.
        metric: ``accuracy`` or ``balanced_accuracy``: what ``accuracy`` holds.
        balance: How the probe treated unequal classes (:class:`Balance`).
        plain: ``(len(l2), splits)`` plain held-out accuracy when ``metric`` is balanced
            accuracy (the accuracy on data mixed as the training set is), else ``None``.
        scale: How the features were scaled (:data:`SCALES`).
    """

    l2: tuple[float, ...]
    accuracy: np.ndarray
    loss: np.ndarray
    metric: str = "accuracy"
    balance: Balance = NO_BALANCE
    plain: np.ndarray | None = None
    scale: str = "feature"

    @property
    def best(self) -> int:
        """Index of the strength with the best mean score (ties: lower held-out loss)."""
        acc = self.accuracy.mean(1).round(9)
        loss = self.loss.mean(1)
        return int(max(range(len(self.l2)), key=lambda i: (acc[i], -loss[i])))

    def folds(self, index: int | None = None) -> np.ndarray:
        """Per-split score at strength ``index`` (default: the best)."""
        return self.accuracy[self.best if index is None else index]

    def plain_folds(self, index: int | None = None) -> np.ndarray:
        """Per-split plain accuracy at strength ``index`` (default: the best)."""
        table = self.accuracy if self.plain is None else self.plain
        return table[self.best if index is None else index]

    def _cut(self, end: int) -> CVPath:
        plain = None if self.plain is None else self.plain[:end]
        return CVPath(self.l2[:end], self.accuracy[:end], self.loss[:end], self.metric,
                      self.balance, plain, self.scale)  # fmt: skip


def cv_path(
    features: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    splits: Splits,
    grid: Sequence[float] = L2_GRID,
    patience: int = 3,
    balance: Balance = NO_BALANCE,
    balanced_score: bool = False,
    scale: str = "feature",
) -> CVPath:
    """Held-out accuracy and loss of the standardised logistic probe along ``grid``, per split.

    Standardisation is fitted on each split's training part only, so nothing leaks; so are the
    class weights and the class frequencies of ``balance``. Large enough splits are solved side
    by side, one per torch thread (:func:`_solver_map`); each solve runs on one thread, so the
    result does not depend on how many ran at once.

    Args:
        features: ``(N, D)`` features.
        labels: ``N`` class indices.
        splits: ``(train_indices, test_indices)`` pairs, e.g. from :func:`stratified_folds`.
        grid: L2 strengths, strongest first.
        patience: Stop the path after this many strengths in a row below the best mean
            score so far (the path is scored only up to there).
        balance: How the probe treats unequal classes.
        balanced_score: Score (and choose the strength) on balanced accuracy, the accuracy a
            test set with equal classes would give.
        scale: How the features are scaled (:data:`SCALES`).

    Returns:
        The :class:`CVPath`.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    classes = int(y.max()) + 1
    rows = len(splits[0][0]) if len(splits) else 0
    size = rows * min(rows, x.shape[1])  # entries of a training matrix, after span reduction
    with _one_thread() as threads, _solver_map(min(threads, len(splits)), size) as run:
        prepared = list(run(lambda s: (*_prepare(x, *s, scale), y[s[0]], y[s[1]]), splits))
        weights = [class_weights(p[2], classes, balance.power) for p in prepared]
        shifts = [log_prior(p[2], classes) if balance.adjust else 0.0 for p in prepared]
        accuracy = np.zeros((len(grid), len(splits)))
        plain = np.zeros((len(grid), len(splits)))
        loss = np.zeros((len(grid), len(splits)))
        best, worse = -1.0, 0
        solve = _path_solver(prepared, classes, weights, size, run)
        for g, l2 in enumerate(grid):
            states = solve(l2)
            for s, (_, x_test, _, y_test) in enumerate(prepared):
                logits = torch.addmm(states[s][1], x_test, states[s][0].T) - shifts[s]
                plain[g, s], accuracy[g, s], loss[g, s] = _scores(logits, y_test, balanced_score)
            mean = float(accuracy[g].mean())
            best, worse = (mean, 0) if mean > best else (best, worse + 1)
            if worse >= patience:  # past the peak: weaker strengths cost most and fit worse
                break
    metric = "balanced_accuracy" if balanced_score else "accuracy"
    plain = plain if balanced_score else None
    path = CVPath(tuple(grid), accuracy, loss, metric, balance, plain, scale)
    return path._cut(len(path.l2) if worse < patience else g + 1)


def _path_solver(prepared: list, classes: int, weights: list, size: int, run) -> Callable:
    """A function ``l2 -> [(weight, bias)] per split`` that warm-starts each strength from the
    last. Small folds go through one solver run over all of them (:class:`Folds`); larger ones
    are solved one split each through ``run``."""
    if size < _JOINT_SIZE:
        joint = Folds([p[0] for p in prepared], [p[2] for p in prepared], classes, weights)
        theta = None

        def solve_joint(l2: float) -> list:
            nonlocal theta
            theta = joint.solve(l2, theta, **_LOOSE)
            return joint.unpack(theta)

        return solve_joint
    states: list = [None] * len(prepared)

    def fit(split: tuple, l2: float, init: tuple | None, weight) -> tuple:
        return fit_logistic(split[0], split[2], classes, l2, init=init, weight=weight, **_LOOSE)

    def solve_each(l2: float) -> list:
        nonlocal states
        states = list(run(fit, prepared, [l2] * len(prepared), states, weights))
        return states

    return solve_each


def _scores(logits: torch.Tensor, labels: torch.Tensor, balanced: bool) -> tuple[float, ...]:
    """Held-out accuracy, the score a strength is chosen on (balanced accuracy when
    ``balanced``, else accuracy again) and mean cross-entropy."""
    predicted = logits.argmax(1)
    plain = float((predicted == labels).double().mean())
    score = balanced_accuracy(predicted, labels) if balanced else plain
    return plain, score, float(torch.nn.functional.cross_entropy(logits, labels))


@dataclass(frozen=True)
class Probe:
    """A fitted standardised logistic probe: ``logits = ((x - mean) / std) @ weight.T + bias``.

    Attributes:
        mean: ``(D,)`` feature means of the fitting set.
        std: ``(D,)`` feature standard deviations of the fitting set.
        weight: ``(classes, D)``.
        bias: ``(classes,)`` (with ``logit-adjusted`` balance, the log class frequencies of the
            fitting set already subtracted).
        l2: The L2 strength it was fitted with.
        balance: Name of the :class:`Balance` it was fitted with.
        scale: How the features were scaled (:data:`SCALES`; ``std`` holds the divisors).
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    balance: str = "none"
    scale: str = "feature"

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores of ``(N, D)`` features."""
        x = (torch.as_tensor(features, dtype=torch.float64) - self.mean) / self.std
        return torch.addmm(self.bias, x, self.weight.T)

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
        """Share of ``features`` whose top class is the label."""
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        return float((self.logits(features).argmax(1) == y).double().mean())


@_one_thread()
def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    l2: float,
    classes: int | None = None,
    balance: Balance = NO_BALANCE,
    scale: str = "feature",
) -> Probe:
    """Standardise on all of ``features`` and fit the logistic probe with strength ``l2``.

    Args:
        features: ``(N, D)`` features of every labelled image.
        labels: ``N`` class indices.
        l2: L2 strength (e.g. ``path.l2[path.best]`` from :func:`cv_path`).
        classes: Number of classes (default: largest label + 1).
        balance: How to treat unequal classes (e.g. ``path.balance``).
        scale: How to scale the features (:data:`SCALES`, e.g. ``path.scale``).

    Returns:
        The fitted :class:`Probe`, in the original feature space.
    """
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    classes = classes if classes is not None else int(y.max()) + 1
    mean, std = standardizer(x, scale)
    z = (x - mean) / std
    basis = _reduce(z)
    reduced = z if basis is None else z @ basis
    state = None
    loss_weight = class_weights(y, classes, balance.power)
    # The same path as the cross-validation, so the refit lands on the same solution branch.
    for strength in [s for s in L2_GRID if s > l2] + [l2]:
        state = fit_logistic(reduced, y, classes, strength, init=state, weight=loss_weight)
    weight, bias = state
    if basis is not None:
        weight = weight @ basis.T
    if balance.adjust:
        bias = bias - log_prior(y, classes)
    if not math.isfinite(float(weight.abs().sum())):
        raise TlkitError("the probe did not converge (non-finite weights); check the features")
    return Probe(mean, std, weight, bias, float(l2), balance.name, scale)
