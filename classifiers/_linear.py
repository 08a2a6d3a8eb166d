"""Mixins shared by the project's linear heads (logreg, linear SVM, ridge probe), as scikit-learn keeps
``linear_model/_base.py``.

A fitted head is ``coef_`` (rows, D), ``intercept_`` (rows,) and ``classes_``, with one row for two
classes (the decision's sign picks the second class). Prediction needs numpy only, in float64, so a
row's score does not depend on the batch it came in.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from ._batched_lbfgs import out_of_core


def validation_rows(est, classes, X_val, y_val):
    """``(X_val, val_idx)``: the validation rows given to a grid's ``fit``, checked against ``est``'s features
    (rows on disk: their width; they are read chunk by chunk when scored), their labels as indices into
    ``classes`` (-1 for a label the training rows lack: it never matches)."""
    if out_of_core(X_val):
        if X_val.shape[1] != est.n_features_in_:
            raise ValueError(f"X_val has {X_val.shape[1]} features, but {type(est).__name__} is expecting "
                             f"{est.n_features_in_} features as input")
    else:
        X_val = validate_data(est, X_val, reset=False, dtype=[np.float64, np.float32])
    y_val = column_or_1d(y_val)
    if len(y_val) != X_val.shape[0]:
        raise ValueError(f"X_val has {X_val.shape[0]} rows but y_val has {len(y_val)} labels")
    val_idx = np.searchsorted(classes, y_val).clip(0, classes.size - 1)
    return X_val, np.where(classes[val_idx] == y_val, val_idx, -1)


class LinearClassifierMixin:
    """Input checks and linear decision of a head with ``coef_``, ``intercept_`` and ``classes_``."""

    def _validate_fit(self, X, y):
        """scikit-learn's input contract: (X, y) checked, labels of any type encoded as 0..K-1."""
        if out_of_core(X):  # rows are checked chunk by chunk as they are read
            self.n_features_in_ = int(X.shape[1])
            y = column_or_1d(y, warn=True)
        else:
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32], order="C")
        check_classification_targets(y)
        classes, y_idx = np.unique(y, return_inverse=True)
        if classes.size < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, but the data "
                             f"contains only one class: {classes[0] if classes.size else None!r}")
        return X, classes, y_idx.astype(np.int64)

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X.astype(np.float64) @ self.coef_.T.astype(np.float64) + self.intercept_
        return scores[:, 0] if self.classes_.size == 2 else scores

    def predict(self, X):
        scores = self.decision_function(X)
        if self.classes_.size == 2:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[scores.argmax(1)]


class LogisticProbaMixin(LinearClassifierMixin):
    """:class:`LinearClassifierMixin` with the probabilities of a logistic model."""

    def predict_proba(self, X):
        scores = self.decision_function(X)
        if self.classes_.size == 2:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1 - p, p])
        scores = scores - scores.max(1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(1, keepdims=True)


class GridWarmStartMixin:
    """The refit's head start from a ``score_grid``: the solutions it fitted on all training rows
    (``self._solutions``, C -> (coef, intercept)) and its preconditioner (``self._preconditioner``).
    Private attributes: ``clone`` drops them, so a fitted grid never leaks into another fit."""

    @staticmethod
    def _start(classes, coef_init, intercept_init, preconditioner_init) -> dict:
        """``init`` and ``preconditioner`` arguments of :func:`fit_logreg_path` from a fit's
        ``coef_init`` (rows, D), ``intercept_init`` (rows,) and ``preconditioner_init``; rows is 1 for
        two classes, else one per class."""
        out = {"preconditioner": "auto" if preconditioner_init is None else preconditioner_init}
        if coef_init is not None:
            rows = 1 if classes.size == 2 else classes.size
            coef_init = np.asarray(coef_init, dtype=np.float64).reshape(rows, -1)
            intercept_init = np.zeros(rows) if intercept_init is None else np.asarray(intercept_init, dtype=np.float64)
            out["init"] = (coef_init, intercept_init.reshape(rows))
        return out

    def grid_solution(self, C):
        """``(coef, intercept)`` fitted at ``C`` on all training rows by the last :meth:`score_grid`,
        or None when that C was not fitted on all of them."""
        for value, solution in getattr(self, "_solutions", {}).items():
            if np.isclose(value, float(C), rtol=1e-12, atol=0):
                return solution
        return None

    def refit_init(self, C) -> dict:
        """Keyword arguments of :meth:`fit` that start a refit at ``C`` from the last :meth:`score_grid`'s
        work: its solution at ``C`` (when it fitted one on all training rows) and its preconditioner."""
        out = {}
        solution = self.grid_solution(C)
        if solution is not None:
            out.update(coef_init=solution[0], intercept_init=solution[1])
        if getattr(self, "_preconditioner", None) is not None:
            out["preconditioner_init"] = self._preconditioner
        return out
