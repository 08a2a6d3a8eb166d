"""Batched multinomial logistic regression: a whole grid of C in one torch solve.

For every C of the grid it minimises the objective of scikit-learn's ``LogisticRegression``
(L2 penalty, multinomial loss, intercept not penalised)::

    C * sum_i CE(softmax(W^T x_i + b), y_i) + 0.5 * ||W||^2

and, like scikit-learn, fits the binomial model when there are two classes (one coefficient row).

Why it is fast
--------------
- **Batched**: one weight tensor per C, stacked, so each pass over the rows is one matrix
  product for the whole grid instead of one per C.
- **Preconditioned L-BFGS**: with centred features ``X_c = X - mean`` and the eigendecomposition
  ``X_c^T X_c = V diag(lam) V^T``, the Hessian approximation ``I + h C X_c^T X_c`` (centred over
  classes) is diagonal in the coordinates ``W = V A``: ``1 + h C lam_j`` per direction, ``h C N``
  for the intercept. ``h`` is the rows' current mean curvature of the softmax: 1/K at W = 0, where
  this is the exact Hessian, and smaller as rows get classified confidently (at large C the
  Böhning bound ``h = 1/2`` would be far too big). Its inverse is the L-BFGS starting metric, so
  the conditioning of the features barely matters. For wide features only the top 128
  eigenpairs are computed (randomized subspace iteration, three passes over the rows), with the
  mean remaining eigenvalue elsewhere. Otherwise rows held in memory are rotated and centred once
  (``X_c V``); with fewer rows than dimensions V spans the rows only, which is exact (the optimum
  never leaves the row space) and makes few-shot problems small.
- **Warm starts along the path**: the grid is solved in blocks of increasing C (``block_size``
  at a time), each block starting from the solution of the largest C of the block before.
- **Out of core**: an ``h5py.Dataset`` (or array) larger than ``memory_budget`` bytes is read in
  row chunks at every pass; loss and gradient are sums over chunks, so the result is the same.
- **Fast layout**: products are taken as ``W^T X^T`` and ``R^T X``, which BLAS runs several times
  faster than ``X W`` and ``X^T R`` for the few columns (classes x C values) a problem has.

Convergence uses scikit-learn's criterion: the largest gradient entry (in W, b coordinates) of the
objective divided by ``C * n_samples`` is below ``tol``. Like any solver stopped by it, at large C
on separable features it stops far from the optimum, and two solvers' stopping points (and test
accuracies) can then differ by points; lower ``tol`` when large-C solutions matter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from features.errors import UserInputError

from ._batched_lbfgs import RowSource, solve_path
from ._validation import check_features, check_labels, check_two_classes

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
_SMALL_WORK = 5e7  # multiply-adds per pass below which one thread is faster


@dataclass
class LogRegPath:
    """Per-C solutions of :func:`fit_logreg_path`, in the order of ``Cs``.

    ``coefs`` is (n_C, n_rows, D) and ``intercepts`` (n_C, n_rows), with ``n_rows = 1`` for
    two classes (scikit-learn's binomial layout) and the number of classes otherwise.
    """

    Cs: np.ndarray
    classes: np.ndarray
    coefs: np.ndarray
    intercepts: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    seconds: float

    def decision_function(self, X) -> np.ndarray:
        """Scores (n_C, N, n_rows) of every C's model on ``X``."""
        X = check_features(X)
        return np.einsum("nd,gkd->gnk", X, self.coefs.astype(np.float32)) + self.intercepts[:, None, :]

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n_C, N) of every C's model on ``X``."""
        scores = self.decision_function(X)
        if self.classes.size == 2:
            return self.classes[(scores[..., 0] > 0).astype(int)]
        return self.classes[scores.argmax(-1)]


def fit_logreg_path(
    X,
    y,
    Cs,
    *,
    device: str = "cpu",
    tol: float = 1e-4,
    max_iter: int = 100,
    history_size: int = 10,
    block_size: int = 4,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    preconditioner: str = "auto",
    max_eigh_dim: int = 4096,
    dtype: str = "float32",
    num_threads: int | None = None,
) -> LogRegPath:
    """Fit L2 logistic regression for every C of a grid in one batched torch solve.

    Parameters
    ----------
    X : ndarray or h5py.Dataset of shape (N, D)
        Features. Read in row chunks at every pass when they need more than ``memory_budget`` bytes.
    y : array-like of shape (N,)
        Integer class labels (at least two classes).
    Cs : sequence of float
        Inverse regularisation strengths, as in scikit-learn's ``LogisticRegression``.
    device : str
        Torch device: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA when available).
    tol : float
        Stop a C when max |gradient| / (C * N) <= tol (scikit-learn's criterion).
    max_iter : int
        L-BFGS iterations per C.
    history_size : int
        L-BFGS memory.
    block_size : int
        Number of C solved together; blocks run in increasing C, warm-started from the previous one.
    memory_budget : int
        Bytes of float32 features allowed on the device at once.
    preconditioner : {"auto", "eigh", "lowrank", "diag"}
        ``eigh``: full eigendecomposition of the centred Gram matrix; ``lowrank``: its top 128
        eigenpairs by randomized subspace iteration (3 passes over the rows) and the mean
        remaining eigenvalue elsewhere; ``diag``: feature variances only. ``auto``: ``eigh`` for
        up to 256 dimensions or fewer rows than dimensions (exact row-space basis, up to
        ``max_eigh_dim`` rows), ``lowrank`` otherwise.
    max_eigh_dim : int
        Largest row count for the exact row-space basis when rows < dimensions.
    dtype : {"float32", "float64"}
        Arithmetic of the solve (float64: slower, for tolerances below float32's reach).
    num_threads : int, optional
        Torch CPU threads during the solve (restored after). Default: one for small problems,
        whose many small operations thread badly, else torch's setting (all cores in a plain
        process, cores / n_jobs inside joblib's workers). On a machine shared with other jobs,
        pass fewer: spinning OpenMP threads slow down by 10x or more under contention.

    Returns
    -------
    LogRegPath
        Coefficients, intercepts and iteration counts per C, in the order of ``Cs``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> path = fit_logreg_path(X / 16, y, [0.01, 1.0])
    >>> path.coefs.shape
    (2, 10, 64)
    """
    import torch

    started = time.perf_counter()
    Cs = np.asarray(Cs, dtype=np.float64).ravel()
    if Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
        raise UserInputError(f"Cs must be positive finite numbers, got {Cs.tolist()}")
    if preconditioner not in ("auto", "eigh", "lowrank", "diag"):
        raise UserInputError(f"unknown preconditioner {preconditioner!r}: use auto, eigh, lowrank or diag")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not hasattr(X, "shape") or not hasattr(X, "ndim"):
        X = np.asarray(X)
    y = check_labels(y, int(X.shape[0]))
    classes = check_two_classes(y)
    y_idx = np.searchsorted(classes, y)
    K = classes.size
    if dtype not in ("float32", "float64"):
        raise UserInputError(f"dtype must be float32 or float64, got {dtype!r}")
    tdtype = getattr(torch, dtype)
    source = RowSource(X, device, memory_budget, tdtype)
    if num_threads is None:
        small = source.n * source.d * Cs.size * K < _SMALL_WORK
        # torch's own count: every core in a plain process, and what joblib allots inside its workers
        # (loky sets OMP_NUM_THREADS to cores / n_jobs), so parallel fits do not oversubscribe.
        num_threads = 1 if small else torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        coefs, intercepts, n_iter, converged = solve_path(
            source, y_idx, K, Cs, tol, max_iter, history_size, block_size, preconditioner, max_eigh_dim)
    finally:
        torch.set_num_threads(previous_threads)
    return LogRegPath(Cs=Cs, classes=classes, coefs=coefs, intercepts=intercepts, n_iter=n_iter, converged=converged,
                      seconds=time.perf_counter() - started)


class _LinearScores:
    """Prediction methods shared by the torch-fitted estimators (numpy only: no torch to predict)."""

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        X = check_features(X)
        scores = X @ self.coef_.T.astype(np.float32) + self.intercept_
        return scores[:, 0] if self.classes_.size == 2 else scores

    def predict_proba(self, X):
        scores = self.decision_function(X)
        if self.classes_.size == 2:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1 - p, p])
        scores = scores - scores.max(1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(1, keepdims=True)

    def predict(self, X):
        scores = self.decision_function(X)
        if self.classes_.size == 2:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[scores.argmax(1)]


class TorchLogisticRegression(_LinearScores, ClassifierMixin, BaseEstimator):
    """L2 logistic regression at one C, solved by :func:`fit_logreg_path`.

    A drop-in for ``sklearn.linear_model.LogisticRegression(C=C)`` (same objective, ``coef_``,
    ``intercept_``, ``classes_``, ``predict_proba``). Prediction needs numpy only.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    tol, max_iter, device, memory_budget : see :func:`fit_logreg_path`.
    """

    def __init__(self, C=1.0, *, tol=1e-4, max_iter=100, device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget

    def fit(self, X, y):
        path = fit_logreg_path(
            X, y, [self.C], device=self.device, tol=self.tol, max_iter=self.max_iter, memory_budget=self.memory_budget
        )
        self.classes_ = path.classes
        self.coef_, self.intercept_ = path.coefs[0], path.intercepts[0]
        self.n_iter_ = path.n_iter.copy()
        self.n_features_in_ = self.coef_.shape[1]
        return self


class BatchedLogisticRegressionCV(_LinearScores, ClassifierMixin, BaseEstimator):
    """Fit the whole C grid at once and keep the C with the best accuracy on a validation set.

    Parameters
    ----------
    Cs : sequence of float, optional
        The grid; default ``logspace(-6, 5, 12)``.
    tol, max_iter, device, memory_budget, block_size : see :func:`fit_logreg_path`.

    Attributes
    ----------
    C_ : float
        The selected C (first of the best in grid order).
    scores_ : ndarray of shape (n_C,)
        Validation accuracy per C.
    path_ : LogRegPath
        All per-C solutions; ``coef_`` and ``intercept_`` are those of ``C_``, fitted on ``X`` only
        (refitting on train+val is the caller's choice, see ``classifiers.protocol``).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> cv = BatchedLogisticRegressionCV(Cs=[0.001, 0.1]).fit(X[:1000] / 16, y[:1000], X[1000:] / 16, y[1000:])
    >>> float(cv.C_)
    0.1
    """

    def __init__(self, Cs=None, *, tol=1e-4, max_iter=100, device="cpu",
                 memory_budget=DEFAULT_MEMORY_BUDGET, block_size=4):
        self.Cs = Cs
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget
        self.block_size = block_size

    def fit(self, X, y, X_val=None, y_val=None):
        """Fit every C on (X, y) and select on (X_val, y_val), which are required."""
        if X_val is None or y_val is None:
            raise UserInputError("BatchedLogisticRegressionCV.fit needs X_val and y_val: C is chosen on them")
        Cs = np.logspace(-6, 5, 12) if self.Cs is None else self.Cs
        self.path_ = fit_logreg_path(
            X, y, Cs, device=self.device, tol=self.tol, max_iter=self.max_iter,
            memory_budget=self.memory_budget, block_size=self.block_size,
        )
        y_val = check_labels(y_val, int(np.shape(X_val)[0]), "validation labels")
        self.scores_ = (self.path_.predict(X_val) == y_val[None, :]).mean(1)
        best = int(np.argmax(self.scores_))
        self.C_ = float(self.path_.Cs[best])
        self.classes_ = self.path_.classes
        self.coef_, self.intercept_ = self.path_.coefs[best], self.path_.intercepts[best]
        self.n_features_in_ = self.coef_.shape[1]
        return self

    def estimator_for(self, C) -> TorchLogisticRegression:
        """A fitted :class:`TorchLogisticRegression` holding the grid's solution at ``C``."""
        check_is_fitted(self, "path_")
        i = int(np.argmin(np.abs(np.log(self.path_.Cs) - np.log(C))))
        model = TorchLogisticRegression(C=float(self.path_.Cs[i]), tol=self.tol, max_iter=self.max_iter,
                                        device=self.device, memory_budget=self.memory_budget)
        model.classes_ = self.path_.classes
        model.coef_, model.intercept_ = self.path_.coefs[i], self.path_.intercepts[i]
        model.n_iter_ = self.path_.n_iter[i : i + 1]
        model.n_features_in_ = model.coef_.shape[1]
        return model
