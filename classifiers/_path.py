"""The regularisation path: L2 logistic regression for every C of a grid in one batched torch solve.

For every C it minimises the objective of scikit-learn's ``LogisticRegression`` (L2 penalty,
multinomial loss, intercept not penalised; the binomial model, one coefficient row, for two classes)::

    C * sum_i CE(softmax(W^T x_i + b), y_i) + 0.5 * ||W||^2

The linear SVM passes its own loss (:mod:`.fast_svm`). The rule: a C has converged when
max |gradient| / (C * n_samples) <= ``tol``, scikit-learn's criterion; at large C on separable
features any solver stopped by it ends far from the optimum (lower ``tol`` when those solutions
matter). A path walked in increasing C may stop past the validation peak (:func:`past_the_peak`).
How the solve is batched, preconditioned and streamed: :mod:`._batched_lbfgs`; its speed against
scikit-learn: ``bench/README.md``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from transferlab.util import UserInputError

from ._batched_lbfgs import PRECISIONS, Preconditioner, RowSource, bfloat16_pays, solve_path
from ._threads import torch_threads
from ._validation import check_features, check_labels, check_two_classes

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
SMALL_WORK = 5e7  # multiply-adds per pass below which one thread is faster, and a pass costs about its overhead


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
        return path_scores(check_features(X), self.coefs, self.intercepts)

    def predict(self, X) -> np.ndarray:
        """Predicted labels (n_C, N) of every C's model on ``X``."""
        return self.classes[class_index(self.decision_function(X))]


def path_scores(X, coefs, intercepts) -> np.ndarray:
    """Scores (n_C, N, n_rows) of a stack of linear models (coefs (n_C, n_rows, D)) on float32 rows."""
    return np.matmul(X, coefs.astype(np.float32).transpose(0, 2, 1)) + intercepts[:, None, :]  # BLAS; einsum is not


def class_index(scores) -> np.ndarray:
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
    precision: str = "exact",
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
        Number of C solved together; blocks run in increasing C, each started from the
        extrapolation of the last two solutions.
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
        pass fewer: spinning OpenMP threads slow down sharply under contention.
    stop : callable, optional
        ``stop(indices, coefs, intercepts)``, called after every block of C (increasing C) with the
        block's positions in ``Cs`` and its solutions; True ends the path there, and the C values
        not reached keep NaN coefficients (see :func:`past_the_peak`).
    init : tuple of arrays, optional
        ``(coefs, intercepts)`` to start from: one pair per C, shaped like :class:`LogRegPath`'s
        ``coefs`` and ``intercepts``, or one (rows, D), (rows,) pair for every C. Default: zero for
        the first block of C, then the path's extrapolation (see ``block_size``).
    problem_cls : class, optional
        Internal: another loss with :class:`._batched_lbfgs.Problem`'s interface
        (:func:`classifiers.fast_svm.fit_svm_path` passes the squared hinge).
    precision : {"exact", "mixed", "bfloat16", "auto"}
        ``exact``: every pass in ``dtype``. ``mixed``: passes in bfloat16 first (rows centred, both
        products), then in ``dtype`` until the stopping rule holds there: the same rule, faster where
        the device multiplies bfloat16 natively. ``bfloat16``: every pass, and the stopping rule, in
        bfloat16 (about three significant digits: for ranking C values, not for a final fit).
        ``auto``: ``mixed`` for float32 where bfloat16 pays off (:func:`._batched_lbfgs.bfloat16_pays`:
        a device that multiplies it natively, enough rows), else ``exact``.

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
    if precision not in PRECISIONS + ("auto",):
        raise UserInputError(f"precision must be one of {', '.join(PRECISIONS)} or auto, got {precision!r}")
    if precision == "auto":
        pays = bfloat16_pays(device, int(X.shape[0]), int(X.shape[1]))
        precision = "mixed" if dtype == "float32" and pays else "exact"
    source = RowSource(X, device, memory_budget, tdtype)
    if num_threads is None:
        num_threads = solve_threads(source.n * source.d * Cs.size * K)
    with torch_threads(num_threads):
        coefs, intercepts, n_iter, converged, used = solve_path(
            source, y_idx, K, Cs, tol, max_iter, history_size, block_size, preconditioner, max_eigh_dim,
            problem_cls=problem_cls, stop=stop, init=init, reuse=reuse, precision=precision)
    return LogRegPath(Cs=Cs, classes=classes, coefs=coefs, intercepts=intercepts, n_iter=n_iter, converged=converged,
                      seconds=time.perf_counter() - started, preconditioner=used)


def solve_threads(work: float) -> int:
    """Torch CPU threads for a solve of ``work`` multiply-adds per pass: one below ``SMALL_WORK`` (many small
    operations thread badly), else torch's own count: every core in a plain process, and what joblib
    allots inside its workers (loky sets OMP_NUM_THREADS to cores / n_jobs), so parallel fits do not
    oversubscribe."""
    import torch

    return 1 if work < SMALL_WORK else torch.get_num_threads()


PAST_PEAK_DECADES = 1.0  # the path stops once a whole decade of C past the best scores clearly below it
PAST_PEAK_Z = 2.0  # "clearly": more than this many standard errors of the best validation accuracy


def clearly_below(p: float, n_val: int, z: float = PAST_PEAK_Z) -> float:
    """The accuracy ``z`` standard errors below ``p``, the standard error of an accuracy p on ``n_val`` rows being
    sqrt(p (1 - p) / n_val): a score under it is clearly below p."""
    return p - z * np.sqrt(max(p * (1.0 - p), 0.0) / max(1, int(n_val)))


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
    >>> past_the_peak(Cs, [0.60, 0.70, 0.69, np.nan, np.nan], 1000)  # a decade on, within the noise
    False
    >>> past_the_peak(Cs, [0.60, 0.70, 0.50, np.nan, np.nan], 1000)
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
    threshold = clearly_below(p, n_val, z)
    return bool(window.any() and np.all(s_sorted[window] < threshold))
