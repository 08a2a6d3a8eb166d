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
- **Only the C values worth fitting** (:meth:`TorchLogisticRegression.score_grid`, the selection
  protocol's path): every other value of a dense grid first, on at most ``SCREEN_ROWS`` rows and
  to a 10x looser tolerance, stopping once validation accuracy has stayed more than 2 standard
  errors below its best for a decade of C (:func:`past_the_peak`; the large C values are the
  expensive ones); then the best and its two grid neighbours on all rows, started from the
  screen's solutions (``init``). The refit on train+val starts from the chosen solution too.
- **One preconditioner**: the screen estimates it; the refine and the refit reuse it, scaled to
  their row counts (``LogRegPath.preconditioner``; :meth:`TorchLogisticRegression.refit_init`).
- **Cache-sized passes**: on a CPU, rows held in memory are passed in chunks of about 4 MiB, so the
  two products of a pass (scores, then gradient) read each chunk while it is in cache; one pass
  over the whole array read it from memory twice (the products are memory-bound at these shapes).
  On CIFAR-10 lite0 features the 45-value selection went from 1.2-1.5x (5,000 rows) and 5x (50,000
  rows) one default scikit-learn fit to 0.3-0.6x at 2 threads on both sides, at the same test
  accuracy; at one thread, where scikit-learn's own fit is 3x faster, it is about 0.6x at 50,000
  rows and 1.2x at 5,000 (``bench/README.md``).
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
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from transferlab.util import UserInputError

from ._batched_lbfgs import Preconditioner, RowSource, solve_path
from ._validation import check_features, check_labels, check_two_classes

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
SCREEN_ROWS = 8192  # score_grid screens larger training sets on a subsample of this many rows
SCREEN_BLOCK = 3  # C values solved together by score_grid: a stop past the peak wastes at most 2
SCREEN_TOL = 1e-3  # score_grid's screen ranks C values: 10x the default tolerance, 2.4x fewer iterations
_SMALL_WORK = 5e7  # multiply-adds per pass below which one thread is faster


@dataclass
class LogRegPath:
    """Per-C solutions of :func:`fit_logreg_path`, in the order of ``Cs``.

    ``coefs`` is (n_C, n_rows, D) and ``intercepts`` (n_C, n_rows), with ``n_rows = 1`` for
    two classes (scikit-learn's binomial layout) and the number of classes otherwise.
    ``preconditioner`` is the one the solve used, to pass to a later solve on rows of the same
    features (``fit_logreg_path(preconditioner=...)``); None after a row-space basis.
    """

    Cs: np.ndarray
    classes: np.ndarray
    coefs: np.ndarray
    intercepts: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    seconds: float
    preconditioner: Preconditioner | None = None

    def decision_function(self, X) -> np.ndarray:
        """Scores (n_C, N, n_rows) of every C's model on ``X``."""
        return _path_scores(check_features(X), self.coefs, self.intercepts)

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n_C, N) of every C's model on ``X``."""
        return self.classes[_class_index(self.decision_function(X))]


def _path_scores(X, coefs, intercepts) -> np.ndarray:
    """Scores (n_C, N, n_rows) of a stack of linear models (coefs (n_C, n_rows, D)) on float32 rows."""
    return np.matmul(X, coefs.astype(np.float32).transpose(0, 2, 1)) + intercepts[:, None, :]  # BLAS; einsum is not


def _class_index(scores) -> np.ndarray:
    """Index of the predicted class from scores (..., n_rows): the sign for one row (binomial), else argmax."""
    return (scores[..., 0] > 0).astype(int) if scores.shape[-1] == 1 else scores.argmax(-1)


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
    stop=None,
    init=None,
    problem_cls=None,
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
    preconditioner : {"auto", "eigh", "lowrank", "diag"} or Preconditioner
        A :class:`LogRegPath`'s ``preconditioner`` from an earlier solve on rows of the same
        features (a subsample, or the training split before a refit on train+val) is used as it is,
        scaled to the row count: no passes over the rows to estimate it (except under a row-space
        basis, below). ``eigh``: full eigendecomposition of the centred Gram matrix; ``lowrank``: its top 128
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
    stop : callable, optional
        ``stop(indices, coefs, intercepts)``, called after every block of C (increasing C) with the
        block's positions in ``Cs`` and its solutions; True ends the path there, and the C values
        not reached keep NaN coefficients (see :func:`past_the_peak`).
    init : tuple of arrays, optional
        ``(coefs, intercepts)`` to start from: one pair per C, shaped like :class:`LogRegPath`'s
        ``coefs`` and ``intercepts``, or one (rows, D), (rows,) pair for every C. Default: zero for
        the first block of C, then the previous block's solution.
    problem_cls : class, optional
        Internal: another loss with :class:`_batched_lbfgs._Problem`'s interface
        (:func:`classifiers.fast_svm.fit_svm_path` passes the squared hinge).

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
    reuse = preconditioner if isinstance(preconditioner, Preconditioner) else None
    if reuse is not None:
        preconditioner = "auto"
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
        coefs, intercepts, n_iter, converged, used = solve_path(
            source, y_idx, K, Cs, tol, max_iter, history_size, block_size, preconditioner, max_eigh_dim, problem_cls=problem_cls, stop=stop,
            init=init, reuse=reuse)
    finally:
        torch.set_num_threads(previous_threads)
    return LogRegPath(Cs=Cs, classes=classes, coefs=coefs, intercepts=intercepts, n_iter=n_iter, converged=converged,
                      seconds=time.perf_counter() - started, preconditioner=used)


PAST_PEAK_DECADES = 1.0  # the path stops once a whole decade of C past the best scores clearly below it
PAST_PEAK_Z = 2.0  # "clearly": more than this many standard errors of the best validation accuracy


def past_the_peak(Cs, scores, n_val: int, decades: float = PAST_PEAK_DECADES, z: float = PAST_PEAK_Z) -> bool:
    """Whether a path solved in increasing C may stop: it has gone ``decades`` past the best score,
    and every score in that last stretch of ``decades`` is more than ``z`` standard errors below it.

    ``scores`` holds NaN for the C values not solved yet. The standard error of the best accuracy p
    on ``n_val`` rows is sqrt(p (1 - p) / n_val). Large C values are the expensive ones (many
    iterations) and, on features a network has pooled, the ones that overfit: validation accuracy
    rises with C to one peak and falls after it, so on the 45-value grid (4 values a decade) this
    skips most of the work. A curve that falls and then rises again by more than the noise within
    the skipped range would be missed; the selection notes which values were not fitted.

    Examples
    --------
    >>> Cs = np.logspace(-3, 1, 5)
    >>> past_the_peak(Cs, [0.60, 0.70, 0.50, np.nan, np.nan], 1000)
    False
    >>> past_the_peak(Cs, [0.60, 0.70, 0.50, 0.40, np.nan], 1000)
    True
    """
    Cs, scores = np.asarray(Cs, dtype=float), np.asarray(scores, dtype=float)
    solved = np.isfinite(scores)
    if not solved.any():
        return False
    order = np.argsort(Cs, kind="stable")
    s_sorted, c_sorted = scores[order], Cs[order]
    best = int(np.nanargmax(s_sorted))
    p = float(s_sorted[best])
    last = int(np.flatnonzero(np.isfinite(s_sorted))[-1])
    span = np.log10(c_sorted[last]) - np.log10(c_sorted[best])
    if span < decades - 1e-9:
        return False
    window = (np.log10(c_sorted) >= np.log10(c_sorted[last]) - decades + 1e-9) & np.isfinite(s_sorted)
    window[: best + 1] = False
    threshold = p - z * np.sqrt(max(p * (1.0 - p), 0.0) / max(1, int(n_val)))
    return bool(window.any() and np.all(s_sorted[window] < threshold))


def _is_h5(X) -> bool:
    return type(X).__module__.startswith("h5py")


class _LinearDecision:
    """Input checks and linear scores shared by the project's linear heads (numpy only: no torch to predict).

    Scores are computed in float64, so a row's score does not depend on the batch it came in.
    """

    def _validate_fit(self, X, y):
        """scikit-learn's input contract: (X, y) checked, labels of any type encoded as 0..K-1."""
        if _is_h5(X):  # out of core: rows are checked chunk by chunk as they are read
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


class _LinearScores(_LinearDecision):
    """:class:`_LinearDecision` with the probabilities of a logistic model."""

    def predict_proba(self, X):
        scores = self.decision_function(X)
        if self.classes_.size == 2:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.column_stack([1 - p, p])
        scores = scores - scores.max(1, keepdims=True)
        e = np.exp(scores)
        return e / e.sum(1, keepdims=True)


class _GridWarmStart:
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


class TorchLogisticRegression(_GridWarmStart, _LinearScores, ClassifierMixin, BaseEstimator):
    """L2 logistic regression at one C, solved by :func:`fit_logreg_path`.

    A drop-in for ``sklearn.linear_model.LogisticRegression(C=C)`` (same objective, ``coef_``,
    ``intercept_``, ``classes_``, ``predict_proba``) that passes scikit-learn's estimator checks.
    Prediction needs numpy only.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    tol, max_iter, device, memory_budget : see :func:`fit_logreg_path`.
    screen_rows : int or None
        ``score_grid`` on more training rows than this screens the grid on a stratified subsample
        of ``screen_rows`` rows, then fits the best C and its two grid neighbours on all rows (see
        :meth:`score_grid`). None or 0: the screen runs on all rows.
    """

    def __init__(self, C=1.0, *, tol=1e-4, max_iter=100, device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET,
                 screen_rows=SCREEN_ROWS):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget
        self.screen_rows = screen_rows

    def fit(self, X, y, coef_init=None, intercept_init=None, preconditioner_init=None):
        """Fit at ``C``; ``coef_init`` (rows, D) and ``intercept_init`` (rows,) start the solver from
        that model (as ``SGDClassifier.fit`` takes them) instead of from zero: same optimum, fewer
        iterations when the start is close. ``preconditioner_init``, a :class:`LogRegPath`'s
        ``preconditioner`` from rows of the same features, saves estimating one. The selection
        protocol passes all three from the grid's work on the training split (:meth:`refit_init`)."""
        X, classes, y_idx = self._validate_fit(X, y)
        path = fit_logreg_path(
            X, y_idx, [self.C], device=self.device, tol=self.tol, max_iter=self.max_iter, memory_budget=self.memory_budget,
            **self._start(classes, coef_init, intercept_init, preconditioner_init),
        )
        self.classes_ = classes
        self.coef_, self.intercept_ = path.coefs[0], path.intercepts[0]
        self.n_iter_ = path.n_iter.copy()
        return self

    def score_grid(self, Cs, X, y, X_val, y_val) -> list:
        """Validation accuracy of this estimator at the values of ``Cs`` worth fitting (NaN elsewhere).

        The selection protocol (:mod:`transferlab.classifiers.protocol`) calls this instead of one
        fit per grid point whenever an estimator has it. Coarse to fine:

        1. **Screen**: every other C of a dense grid (log spacing up to 0.35 decade; the full
           45-value grid has 0.25), in increasing C, on a stratified subsample of ``screen_rows``
           rows when there are more (C scaled by rows / subsample: the same penalty per row), to a
           looser tolerance (``SCREEN_TOL``: the screen only ranks C values), stopping past the
           validation peak (:func:`past_the_peak`).
        2. **Refine**: the screen's best C and its two neighbours on the full grid, fitted on all
           rows to ``tol``, each started from the screen's solution at the nearest C. (Chasing a
           best that then moves along a flat top cost more than it found: measured, one round.)

        Values fitted by the screen only keep their screening scores; those not reached score NaN
        and are never chosen. Afterwards :meth:`refit_init` gives the refit its head start: the
        refine's solution at the chosen C (:meth:`grid_solution`) and the shared preconditioner.
        """
        def solve(Cs, X, y, tol, init=None, preconditioner="auto"):
            cv = BatchedLogisticRegressionCV(Cs=Cs, tol=tol, max_iter=self.max_iter, device=self.device,
                                             memory_budget=self.memory_budget, refit=False, block_size=SCREEN_BLOCK)
            cv.fit(X, y, X_val, y_val, init=init, preconditioner=preconditioner)
            return cv.scores_, cv.path_

        Cs = np.asarray(Cs, dtype=np.float64).ravel()
        n, y = int(X.shape[0]), np.asarray(y)
        order = np.argsort(Cs, kind="stable")
        steps = np.diff(np.log10(Cs[order]))
        coarse = order[::2] if Cs.size >= 9 and steps.size and np.max(steps) <= 0.35 else order
        screened = bool(self.screen_rows) and n > self.screen_rows and coarse.size > 3 and not _is_h5(X)
        out = np.full(Cs.size, np.nan)
        loose = max(float(self.tol), SCREEN_TOL)
        if screened:
            from sklearn.model_selection import train_test_split

            sub, _ = train_test_split(np.arange(n), train_size=int(self.screen_rows), stratify=y, random_state=0)
            sub = np.sort(sub)
            out[coarse], screen = solve(Cs[coarse] * (n / sub.size), X[sub], y[sub], loose)
        else:
            out[coarse], screen = solve(Cs[coarse], X, y, loose)
        rank_of = np.empty(Cs.size, dtype=int)
        rank_of[order] = np.arange(Cs.size)
        coarse_rank = rank_of[coarse]
        rank = rank_of[int(np.nanargmax(out))]
        todo = order[max(0, rank - 1):rank + 2]
        # each from the screen's solution at the same C, else at the nearest C it fitted
        start = [int(np.argmin(np.abs(coarse_rank - rank_of[i]))) for i in todo]
        out[todo], path = solve(Cs[todo], X, y, self.tol, init=(screen.coefs[start], screen.intercepts[start]),
                                preconditioner=screen.preconditioner or "auto")
        self._solutions = {float(Cs[i]): (path.coefs[j], path.intercepts[j]) for j, i in enumerate(todo.tolist())
                           if np.all(np.isfinite(path.coefs[j]))}
        self._preconditioner = path.preconditioner
        return [float(s) for s in out]


class BatchedLogisticRegressionCV(_LinearScores, ClassifierMixin, BaseEstimator):
    """Fit the whole C grid at once and keep the C with the best validation accuracy.

    ``fit(X, y)`` holds out a stratified ``val_fraction`` of the rows (seeded by ``random_state``)
    to choose C on, then refits on all rows at that C; ``fit(X, y, X_val, y_val)`` chooses on the
    given validation rows instead. When no stratified holdout is possible (a class with a single
    row), no C is chosen on data: the grid's C closest to 1 is used and ``selection_`` says why.

    Parameters
    ----------
    Cs : sequence of float, optional
        The grid; default ``logspace(-6, 5, 12)``.
    val_fraction : float
        Share of rows held out when no validation rows are given.
    refit : bool
        Refit on all rows (with ``X_val`` when given) at the chosen C; False keeps the grid
        solution fitted on ``X`` alone.
    random_state : int
        Seed of the holdout.
    stop_past_peak : bool
        Walk the grid in increasing C and stop once validation accuracy has stayed clearly below the
        best for a decade of C (:func:`past_the_peak`); the C values not reached score NaN and are
        never chosen. False solves every C.
    tol, max_iter, device, memory_budget, block_size : see :func:`fit_logreg_path`.

    Attributes
    ----------
    C_ : float
        The selected C (first of the best in grid order).
    scores_ : ndarray of shape (n_C,)
        Validation accuracy per C (NaN when nothing could be held out, or for a C not reached
        because the path stopped past the peak).
    path_ : LogRegPath
        All per-C solutions fitted on the training rows.
    selection_ : str
        Where C was chosen.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> cv = BatchedLogisticRegressionCV(Cs=[0.001, 0.1]).fit(X[:1000] / 16, y[:1000], X[1000:] / 16, y[1000:])
    >>> float(cv.C_)
    0.1
    """

    def __init__(self, Cs=None, *, val_fraction=0.2, refit=True, random_state=0, tol=1e-4, max_iter=100,
                 device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET, block_size=4, stop_past_peak=True):
        self.Cs = Cs
        self.val_fraction = val_fraction
        self.refit = refit
        self.random_state = random_state
        self.stop_past_peak = stop_past_peak
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget
        self.block_size = block_size

    def fit(self, X, y, X_val=None, y_val=None, init=None, preconditioner="auto"):
        """Choose C on validation rows (given, or held out of ``X``), then refit (see ``refit``).

        ``init``: ``(coefs, intercepts)`` per C to start the path from; ``preconditioner``: a name or
        an earlier path's preconditioner (see :func:`fit_logreg_path`). The refit starts from the
        chosen solution and reuses the path's preconditioner.
        """
        from sklearn.model_selection import train_test_split

        X, classes, y_idx = self._validate_fit(X, y)
        Cs = np.logspace(-6, 5, 12) if self.Cs is None else np.asarray(self.Cs, dtype=np.float64).ravel()
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        fit_rows = None
        if X_val is not None:
            X_val = validate_data(self, X_val, reset=False, dtype=[np.float64, np.float32])
            y_val = column_or_1d(y_val)
            if len(y_val) != X_val.shape[0]:
                raise ValueError(f"X_val has {X_val.shape[0]} rows but y_val has {len(y_val)} labels")
            val_idx = np.searchsorted(classes, y_val).clip(0, classes.size - 1)
            val_idx = np.where(classes[val_idx] == y_val, val_idx, -1)  # unseen labels never match
            X_fit, y_fit, self.selection_ = X, y_idx, "given validation rows"
        else:
            counts = np.bincount(y_idx)
            n_val = int(np.ceil(self.val_fraction * y_idx.size))
            if counts.min() >= 2 and classes.size <= n_val <= y_idx.size - classes.size and not _is_h5(X):
                tr, va = train_test_split(np.arange(y_idx.size), test_size=n_val, stratify=y_idx,
                                          random_state=self.random_state)
                tr, va = np.sort(tr), np.sort(va)
                X_fit, y_fit, X_val, val_idx = X[tr], y_idx[tr], X[va], y_idx[va]
                self.selection_ = f"held-out fraction {self.val_fraction:g} (seed {self.random_state})"
                fit_rows = "all"
            else:
                X_fit, y_fit, X_val = X, y_idx, None
                self.selection_ = "none: too few rows per class to hold out validation rows; C closest to 1"
        scores = np.full(Cs.size, np.nan)

        def score_block(where, W, b):  # validation accuracy of each block as it is solved
            scores[where] = (_class_index(_path_scores(X_val32, W, b)) == val_idx[None, :]).mean(1)
            return bool(self.stop_past_peak) and past_the_peak(Cs, scores, val_idx.size)

        X_val32 = None if X_val is None else np.asarray(X_val, dtype=np.float32)
        stop = None if X_val is None else score_block
        self.path_ = fit_logreg_path(X_fit, y_fit, Cs, device=self.device, tol=self.tol, max_iter=self.max_iter,
                                     memory_budget=self.memory_budget, block_size=self.block_size, stop=stop,
                                     init=init, preconditioner=preconditioner)
        if X_val is not None:
            self.scores_ = scores
            best = int(np.nanargmax(self.scores_))
        else:
            self.scores_ = np.full(Cs.size, np.nan)
            best = int(np.argmin(np.abs(np.log(Cs))))
        self.C_ = float(Cs[best])
        self.classes_ = classes
        self.coef_, self.intercept_ = self.path_.coefs[best], self.path_.intercepts[best]
        self.n_iter_ = self.path_.n_iter[best:best + 1]
        if self.refit and (fit_rows == "all" or (X_val is not None and fit_rows is None)):
            X_all = X if fit_rows == "all" else np.concatenate([X, X_val])
            y_all = y_idx if fit_rows == "all" else np.concatenate([y_idx, val_idx])
            keep = y_all >= 0
            final = fit_logreg_path(X_all[keep], y_all[keep], [self.C_], device=self.device, tol=self.tol,
                                    max_iter=self.max_iter, memory_budget=self.memory_budget,
                                    init=(self.coef_, self.intercept_),
                                    preconditioner=self.path_.preconditioner or "auto")
            self.coef_, self.intercept_, self.n_iter_ = final.coefs[0], final.intercepts[0], final.n_iter.copy()
        return self

    def estimator_for(self, C) -> TorchLogisticRegression:
        """A fitted :class:`TorchLogisticRegression` holding the grid's solution at ``C`` (fitted on the training rows)."""
        check_is_fitted(self, "path_")
        i = int(np.argmin(np.abs(np.log(self.path_.Cs) - np.log(C))))
        if not np.all(np.isfinite(self.path_.coefs[i])):
            raise ValueError(f"C={self.path_.Cs[i]:g} was not fitted: the path stopped past the validation peak "
                             f"(stop_past_peak=False fits every C)")
        model = TorchLogisticRegression(C=float(self.path_.Cs[i]), tol=self.tol, max_iter=self.max_iter,
                                        device=self.device, memory_budget=self.memory_budget)
        model.classes_ = self.classes_
        model.coef_, model.intercept_ = self.path_.coefs[i], self.path_.intercepts[i]
        model.n_iter_ = self.path_.n_iter[i : i + 1]
        model.n_features_in_ = model.coef_.shape[1]
        return model
