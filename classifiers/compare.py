"""Comparing two probes measured on the same rows: paired differences and their noise.

Two layers (or heads) scored on the same validation rows are *paired*: most rows are right or
wrong for both, so the noise of their difference is far smaller than the two accuracies'
standard errors combined. Two measurements, for two sizes of data:

- **one split** (:func:`paired_split_gap`): per-row correctness of both on the same rows; the
  difference is the mean of per-row differences ``d_i`` in {-1, 0, 1}, its standard error
  ``std(d) / sqrt(n)`` (the normal form of McNemar's test on the discordant rows).
- **repeated k-fold** (:func:`repeated_folds`, :func:`corrected_kfold_gap`): for small data, where
  one validation split of a hundred rows decides by a few images, every labelled row validates
  once per repeat. Fold differences are not independent (their training rows overlap), so the
  variance of their mean uses Nadeau and Bengio's correction (Machine Learning 52, 2003):
  ``(1/J + n_test/n_train) * s^2`` over the ``J`` fold differences, not ``s^2 / J``.

A difference is real when it exceeds ``z`` of its standard errors (:meth:`Gap.beats`); the
caller states which ``z`` (the decision's :data:`transferlab.pipeline.decision.Z`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Gap:
    """A paired difference ``a - b`` of two accuracies, its standard error, and how it was measured."""

    difference: float
    se: float
    method: str  # "split" (one validation split, per-row pairs) or "kfold RxK" (repeated k-fold)
    n: int  # rows the difference was measured on (per repeat, for k-fold)

    @property
    def in_se(self) -> float:
        """The difference in standard errors (inf for a positive difference measured without noise)."""
        if self.se > 0:
            return self.difference / self.se
        return math.inf if self.difference > 0 else (-math.inf if self.difference < 0 else 0.0)

    def beats(self, z: float) -> bool:
        """Whether ``a`` is better than ``b`` by more than ``z`` standard errors."""
        return self.in_se > z

    def to_dict(self) -> dict:
        return {**asdict(self), "in_se": self.in_se}


def paired_split_gap(correct_a, correct_b) -> Gap:
    """The difference of two accuracies scored on the same rows, with its paired standard error.

    ``correct_a`` and ``correct_b`` are boolean per-row correctness on the same rows, in the same
    order. The standard error is that of the mean of ``d_i = a_i - b_i``; it is zero only when the
    two never disagree, and then floored at the resolution of one row (``1 / n``) so that a
    difference of zero is never "certain".
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired correctness needs two equal 1-d arrays, got shapes {a.shape} and {b.shape}")
    d = a.astype(np.float64) - b.astype(np.float64)
    n = d.size
    var = d.var(ddof=1) if n > 1 else 0.0
    se = math.sqrt(max(var, 1.0 / n ** 2) / n)  # floor: one discordant row's worth of noise
    return Gap(float(d.mean()), se, "split", int(n))


def repeated_folds(y, folds: int = 5, repeats: int = 2, seed: int = 0) -> list:
    """Stratified ``folds``-fold splits of the rows of ``y``, ``repeats`` times: ``[(train_idx, test_idx), ...]``.

    Every probe compared on these folds sees the same rows (the pairing). ``folds`` is lowered to
    the smallest class's count when a class is smaller (at least 2 folds); a class with a single
    row cannot be stratified and raises ``ValueError``.
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    y = np.asarray(y)
    smallest = int(np.unique(y, return_counts=True)[1].min())
    k = min(folds, smallest)
    if k < 2:
        raise ValueError("a class has a single labelled row: stratified folds are impossible")
    rskf = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in rskf.split(np.zeros(y.size), y)]


def kfold_shape(splits: list) -> str:
    """``"kfold RxK"`` for a list made by :func:`repeated_folds` (R repeats of K folds)."""
    n = sum(te.size for _, te in splits)
    total = splits[0][0].size + splits[0][1].size
    repeats = max(1, round(n / total))
    return f"kfold {repeats}x{len(splits) // repeats}"


def corrected_kfold_gap(acc_a, acc_b, splits: list) -> Gap:
    """The mean fold difference ``a - b`` with Nadeau and Bengio's corrected standard error.

    ``acc_a`` and ``acc_b`` are the accuracies of the two probes on each fold of ``splits`` (same
    order). The variance of the mean is ``(1/J + n_test/n_train) * s^2`` with ``s^2`` the sample
    variance of the ``J`` fold differences; floored, as in :func:`paired_split_gap`, at one row of
    a fold.
    """
    a, b = np.asarray(acc_a, dtype=np.float64), np.asarray(acc_b, dtype=np.float64)
    if a.shape != b.shape or a.shape != (len(splits),):
        raise ValueError(f"one accuracy per fold needed: {a.shape}, {b.shape} for {len(splits)} folds")
    d = a - b
    j = d.size
    n_test = float(np.mean([te.size for _, te in splits]))
    n_train = float(np.mean([tr.size for tr, _ in splits]))
    s2 = d.var(ddof=1) if j > 1 else 0.0
    se = math.sqrt(max((1.0 / j + n_test / n_train) * s2, 1.0 / n_test ** 2 / j))
    return Gap(float(d.mean()), se, kfold_shape(splits), int(round(n_test + n_train)))


def fold_table(X, y, splits: list, head: str = "logreg", *, seed: int = 0, grid=None) -> tuple[list, np.ndarray]:
    """The whole grid of ``head`` fitted on each fold's training rows and scored on its held-out rows.

    ``splits`` are ``(train_idx, test_idx)`` of :func:`repeated_folds`; returns ``(grid_points, table)``
    with ``table`` (folds, points) (:func:`transferlab.classifiers.protocol.fold_grid_scores`: the
    logistic regression fits every fold in one stack, standardised once on all rows).
    """
    from .protocol import fold_grid_scores

    return fold_grid_scores(X, y, splits, head, grid=grid, seed=seed)


def choose_on_folds(points: list, table) -> tuple[np.ndarray, dict]:
    """Each fold's accuracy at the grid point whose mean over the folds is best (``table``: folds x points).

    As scikit-learn's ``LogisticRegressionCV`` chooses; a grid point that some fold left unfitted
    (past that fold's peak) is not chosen; ties go to the first in grid order, as in the selection
    protocol. Returns ``(per_fold_accuracy, params)``.
    """
    table = np.asarray(table, dtype=float)
    mean = np.where(np.isfinite(table).all(axis=0), table.mean(axis=0), -np.inf)
    best = int(np.argmax(mean))
    return table[:, best], dict(points[best])


def kfold_accuracies(X, y, splits: list, head: str = "logreg", *, seed: int = 0, grid=None) -> tuple[np.ndarray, dict]:
    """Each fold's accuracy of ``head``, at the grid point whose mean over the folds is best.

    Every layer compared on the same ``splits`` is measured the same way: the whole grid fitted per
    fold (:func:`fold_table`), the grid point chosen on the mean over folds (:func:`choose_on_folds`).
    Returns ``(per_fold_accuracy, params)``.
    """
    points, table = fold_table(X, y, splits, head, seed=seed, grid=grid)
    return choose_on_folds(points, table)


def split_correctness(X, y, X_val, y_val, head: str = "logreg", *, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Per-row correctness on the validation rows of ``head`` chosen on them and fitted on the training rows alone.

    The pairs :func:`paired_split_gap` compares. Returns ``(correct, params)``.
    """
    from .protocol import select_and_fit

    r = select_and_fit(X, y, X_val, y_val, None, None, head, seed=seed, refit_with_val=False)
    return np.asarray(r.estimator.predict(X_val) == np.asarray(y_val)), r.params
