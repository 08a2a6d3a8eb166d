"""Rows drawn from labelled data: the validation holdout and capped samples, one rule wherever drawn.

The heads' selection protocol, :class:`~transferlab.classifiers.fast_logreg.BatchedLogisticRegressionCV`,
fine-tuning and ``advise`` hold out validation rows with :func:`stratified_holdout`, so "chosen on
validation" means the same rows everywhere for the same labels, fraction and seed.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import train_test_split

from transferlab.util import UserInputError


def stratified_holdout(y, fraction: float = 0.2, seed: int = 0):
    """Split the row indices of ``y`` into (train, val), stratified by class and seeded.

    The rule: a class with fewer than 2 rows stays wholly in train (it cannot be on both sides);
    of the other classes' rows, ``ceil(fraction * rows)`` are held out, stratified, by
    scikit-learn's ``train_test_split(random_state=seed)``. Every class keeps a training row.
    Labels count by their sorted order only: ``y`` and its codes 0..K-1 give the same rows.

    Returns ``(train_idx, val_idx, None)``, both sorted, or ``(None, None, reason)`` when there
    is no such holdout: no class has 2 rows, or the held-out count cannot give each class that has
    a row on both sides.

    Examples
    --------
    >>> train, val, _ = stratified_holdout([0, 0, 0, 0, 1, 1, 1, 1, 2], 0.25, seed=0)
    >>> sorted(val.tolist() + train.tolist()) == list(range(9)), 8 in train
    (True, True)
    """
    if not 0.0 < fraction < 1.0:
        raise UserInputError(f"val_fraction must be between 0 and 1, got {fraction}")
    y = np.asarray(y)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    splittable = counts[inverse.reshape(-1)] >= 2
    rows = np.flatnonzero(splittable)
    n_classes = int(np.count_nonzero(counts >= 2))
    if n_classes == 0:
        return None, None, "every class has a single training example"
    n_val = math.ceil(fraction * rows.size)
    if n_val < n_classes or rows.size - n_val < n_classes:
        return None, None, f"{rows.size} training rows cannot hold a stratified {fraction:g} validation split"
    train, val = train_test_split(rows, test_size=n_val, stratify=y[rows], random_state=seed)
    return np.union1d(train, np.flatnonzero(~splittable)), np.sort(val), None


def validation_source(train_labels, val_rows: int, fraction: float, seed: int = 0):
    """Where a run's validation rows come from, the one rule of the heads, the sweep, fine-tuning and advise:
    the data's own ``val`` split when it has rows, else the rows :func:`stratified_holdout` holds out of
    the training split.

    Returns ``(train_idx, val_idx, source, reason)``: with a ``val`` split (``val_rows`` > 0),
    every training row and every row of that split, source ``"val split"``; else the holdout of
    ``train_labels`` (``val_idx`` indexes the training split), source ``"<fraction> of train (stratified,
    seed <seed>)"``; else (no such holdout) ``(all training rows, None, "none", reason)``.
    """
    n = len(train_labels)
    if val_rows > 0:
        return np.arange(n), np.arange(val_rows), "val split", None
    tr, va, reason = stratified_holdout(train_labels, fraction, seed)
    if reason is not None:
        return np.arange(n), None, "none", reason
    return tr, va, f"{fraction:g} of train (stratified, seed {seed})", None


def stratified_sample(y, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` rows of ``y``, stratified by class and seeded; all rows when ``n`` >= len(y).

    The rows are the held-out side of ``train_test_split(test_size=n, stratify=y, random_state=seed)``;
    where scikit-learn cannot stratify that draw (fewer rows asked than classes, or a class with a
    single row), a plain seeded draw of ``n`` rows.
    """
    y = np.asarray(y)
    rows = np.arange(y.size)
    if n >= y.size:
        return rows
    try:
        _, taken = train_test_split(rows, test_size=n, stratify=y, random_state=seed)
    except ValueError:  # a class too small to stratify
        _, taken = train_test_split(rows, test_size=n, random_state=seed)
    return np.sort(taken)
