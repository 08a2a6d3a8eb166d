"""Input checks shared by the classifiers package: one place, one wording."""

from __future__ import annotations

import numpy as np

from transferlab.util import UserInputError


def is_h5(X) -> bool:
    """Whether ``X`` is an ``h5py.Dataset``: rows read from disk in chunks, checked as they are read."""
    return type(X).__module__.startswith("h5py")


def check_features(X, name: str = "features") -> np.ndarray:
    """Return ``X`` as a finite 2-D float32 array, or raise UserInputError naming it."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise UserInputError(f"{name} must be a 2-D array (rows, dims), got shape {X.shape}")
    if X.shape[0] == 0:
        raise UserInputError(f"{name} has no rows: check the data split")
    if not np.issubdtype(X.dtype, np.number):
        raise UserInputError(f"{name} must be numeric, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise UserInputError(f"{name} contains NaN or infinite values: re-extract the features")
    return X


def check_labels(y, n_rows: int, name: str = "labels") -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of length ``n_rows``."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise UserInputError(f"{name} must be 1-D with {n_rows} entries (one per row), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)
        else:
            raise UserInputError(f"{name} must be integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def check_two_classes(y: np.ndarray, name: str = "training labels") -> np.ndarray:
    """Return the sorted classes of ``y``; raise when there are fewer than two."""
    classes = np.unique(y)
    if classes.size < 2:
        only = f" (only class {classes[0]})" if classes.size else ""
        raise UserInputError(
            f"{name} contain a single class{only}: a classifier needs at least two; "
            "check the data set and its train split"
        )
    return classes
