"""Logistic-regression heads on the batched path solver: one C, or the whole grid with C chosen on validation.

:class:`TorchLogisticRegression` is a drop-in for scikit-learn's ``LogisticRegression(C=C)``; its
``score_grid`` (what the selection protocol calls) screens every other C of a dense grid on a
subsample, then refines the best (and its neighbours, unless the top is flat) on all rows.
:class:`BatchedLogisticRegressionCV` fits a grid and keeps the C with the best validation accuracy.
:func:`~transferlab.classifiers.out_of_core.select_logreg` runs the protocol's selection on rows that may
stay on disk. All solve with
:func:`fit_logreg_path` (:mod:`._path`: the objective, the stopping rule); the figures are in
``bench/README.md`` and ``bench/out_of_core.md``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ._batched_lbfgs import RowBlocks, bfloat16_pays, out_of_core
from ._linear import GridWarmStartMixin, LogisticProbaMixin, validation_rows
from ._path import (
    DEFAULT_MEMORY_BUDGET,
    PAST_PEAK_Z,
    LogRegPath,
    class_index,
    clearly_below,
    fit_logreg_path,
    past_the_peak,
    path_scores,
)
from ._threads import torch_threads
from ._validation import check_features
from .holdout import stratified_holdout

__all__ = ["BatchedLogisticRegressionCV", "DEFAULT_MEMORY_BUDGET", "LogRegPath", "TorchLogisticRegression",
           "accuracies", "fit_logreg_path", "flat_top", "past_the_peak"]

SCREEN_ROWS = 8192  # score_grid screens larger training sets on a subsample of this many rows
SCREEN_BLOCK = 1  # C values solved together by score_grid: one at a time, each from the path's extrapolation
SCREEN_TOL = 1e-3  # score_grid's screen only ranks C values: 10x the default tolerance
VAL_CHUNK_ROWS = 16384  # validation rows are scored this many at a time (rows on disk: as they are read)


class TorchLogisticRegression(GridWarmStartMixin, LogisticProbaMixin, ClassifierMixin, BaseEstimator):
    """L2 logistic regression at one C, solved by :func:`fit_logreg_path`.

    A drop-in for ``sklearn.linear_model.LogisticRegression(C=C)`` (same objective, ``coef_``,
    ``intercept_``, ``classes_``, ``predict_proba``) that passes scikit-learn's estimator checks.
    Prediction needs numpy only.

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    tol, max_iter, device, memory_budget, precision : see :func:`fit_logreg_path` (``precision="auto"``:
        bfloat16 passes first where they pay, the stopping rule still met in float32).
    screen_rows : int or None
        ``score_grid`` on more training rows than this screens the grid on a stratified subsample
        of ``screen_rows`` rows, then refines on all rows (see :meth:`score_grid`). None or 0: the
        screen runs on all rows.
    """

    def __init__(self, C=1.0, *, tol=1e-4, max_iter=100, device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET,
                 screen_rows=SCREEN_ROWS, precision="auto"):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget
        self.screen_rows = screen_rows
        self.precision = precision

    def fit(self, X, y, coef_init=None, intercept_init=None, preconditioner_init=None):
        """Fit at ``C``; ``coef_init`` (rows, D) and ``intercept_init`` (rows,) start the solver from
        that model (as ``SGDClassifier.fit`` takes them) instead of from zero: same optimum, fewer
        iterations when the start is close. ``preconditioner_init``, a :class:`LogRegPath`'s
        ``preconditioner`` from rows of the same features, saves estimating one. The selection
        protocol passes all three from the grid's work on the training split (:meth:`refit_init`)."""
        X, classes, y_idx = self._validate_fit(X, y)
        path = fit_logreg_path(
            X, y_idx, [self.C], device=self.device, tol=self.tol, max_iter=self.max_iter,
            memory_budget=self.memory_budget, precision=self.precision,
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
           45-value grid has 0.25), in increasing C, each started from the path's extrapolation,
           on a stratified subsample of ``screen_rows`` rows when there are more (C scaled by
           rows / subsample: the same penalty per row), to a looser tolerance (``SCREEN_TOL``) and
           in bfloat16 where the device multiplies it natively (the screen only ranks C values),
           stopping past the validation peak (:func:`past_the_peak`).
        2. **Refine**, on all rows to ``tol``, each started from the screen's solution at the
           nearest C: the screen's best C and its two neighbours on the full grid; only the best
           when the screen's top is flat (its neighbours within one standard error of the best,
           :func:`flat_top`: the values between them cannot be told apart), and nothing then when
           the screen already ran on all rows. (Chasing a best that then moves along a flat top
           cost more than it found: measured, one round.)

        Values fitted by the screen only keep their screening scores; those not reached score NaN
        and are never chosen. Afterwards :meth:`refit_init` gives the refit its head start: the
        solution at the chosen C (:meth:`grid_solution`) and the shared preconditioner.
        """
        def solve(Cs, X, y, tol, precision, init=None, preconditioner="auto"):
            cv = BatchedLogisticRegressionCV(Cs=Cs, tol=tol, max_iter=self.max_iter, device=self.device,
                                             memory_budget=self.memory_budget, refit=False, precision=precision,
                                             block_size=SCREEN_BLOCK if init is None else len(Cs))
            cv.fit(X, y, X_val, y_val, init=init, preconditioner=preconditioner)
            return cv.scores_, cv.path_

        Cs = np.asarray(Cs, dtype=np.float64).ravel()
        n, y = int(X.shape[0]), np.asarray(y)
        if out_of_core(X) and not isinstance(X, RowBlocks):  # a file's rows: read by blocks, subsample included
            X = RowBlocks(X)
        order = np.argsort(Cs, kind="stable")
        steps = np.diff(np.log10(Cs[order]))
        coarse = order[::2] if Cs.size >= 9 and steps.size and np.max(steps) <= 0.35 else order
        screened = bool(self.screen_rows) and n > self.screen_rows and coarse.size > 3
        out = np.full(Cs.size, np.nan)
        loose = max(float(self.tol), SCREEN_TOL)
        rows = np.arange(n)
        if screened:
            from sklearn.model_selection import train_test_split

            rows = np.sort(train_test_split(rows, train_size=int(self.screen_rows), stratify=y, random_state=0)[0])
        pays = bfloat16_pays(self.device, rows.size, int(X.shape[1]))
        fast = self.precision == "mixed" or (self.precision == "auto" and pays)
        screen_precision = "bfloat16" if fast else self.precision
        if screened:
            X_sub = X.take(rows) if isinstance(X, RowBlocks) else X[rows]
            out[coarse], screen = solve(Cs[coarse] * (n / rows.size), X_sub, y[rows], loose, screen_precision)
        else:
            out[coarse], screen = solve(Cs[coarse], X, y, loose, screen_precision)
        rank_of = np.empty(Cs.size, dtype=int)
        rank_of[order] = np.arange(Cs.size)
        coarse_rank = rank_of[coarse]
        best = int(np.nanargmax(out))
        if flat_top(out[coarse], int(np.flatnonzero(coarse == best)[0]), np.asarray(y_val).size):
            todo = np.array([best] if screened else [], dtype=int)
        else:
            todo = order[max(0, rank_of[best] - 1):rank_of[best] + 2]
        self._preconditioner = screen.preconditioner
        if todo.size == 0:  # the screen's own solution, on all rows to its looser tolerance
            j = int(np.flatnonzero(coarse == best)[0])
            self._solutions = {float(Cs[best]): (screen.coefs[j], screen.intercepts[j])}
            return [float(s) for s in out]
        # each from the screen's solution at the same C, else at the nearest C it fitted
        start = [int(np.argmin(np.abs(coarse_rank - rank_of[i]))) for i in todo]
        out[todo], path = solve(Cs[todo], X, y, self.tol, self.precision,
                                init=(screen.coefs[start], screen.intercepts[start]),
                                preconditioner=screen.preconditioner or "auto")
        self._solutions = {float(Cs[i]): (path.coefs[j], path.intercepts[j]) for j, i in enumerate(todo.tolist())
                           if np.all(np.isfinite(path.coefs[j]))}
        self._preconditioner = path.preconditioner
        return [float(s) for s in out]

    def score_folds(self, Cs, X, y, splits) -> np.ndarray:
        """Held-out accuracy (folds, n_C) of this estimator at every C worth fitting (NaN elsewhere), fitted
        on the training rows of each ``(train_idx, test_idx)`` of ``splits`` (rows of ``X``), every fold
        in one stack (:class:`SubsetSolver`: one preconditioner for all, one product per pass).

        Each fold follows :meth:`score_grid`'s schedule on all its training rows (no subsample):
        the screen in increasing C to ``SCREEN_TOL``, each fold leaving the stack once past its
        peak (:func:`past_the_peak`), then the refine of each fold's best C and its neighbours to
        ``tol`` (none when its top is flat; a neighbour more than ``PAST_PEAK_Z`` standard errors
        below the best keeps its screen score: a tighter tolerance moves a score by a row or two,
        not by that). Where a fold's best C is the same, so is its solution, to the solvers'
        tolerance.
        """
        import torch

        from ._batched_lbfgs import SubsetSolver, path_start
        from ._path import solve_threads

        Cs = np.asarray(Cs, dtype=np.float64).ravel()
        X = check_features(X)
        classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
        n, K = int(X.shape[0]), int(classes.size)
        masks = np.zeros((len(splits), n), dtype=bool)
        held = [np.asarray(te) for _, te in splits]
        for f, (tr, _) in enumerate(splits):
            masks[f, tr] = True
        rows = int(masks.sum(1).max())
        precision = self.precision
        if precision == "auto":
            precision = "mixed" if bfloat16_pays(self.device, rows, int(X.shape[1])) else "exact"
        screen_precision = "bfloat16" if precision in ("mixed", "bfloat16") else "exact"
        model_C = Cs / 2.0 if K == 2 else Cs  # the multinomial pair's C (see solve_path)
        order = np.argsort(Cs, kind="stable")
        steps = np.diff(np.log10(Cs[order]))
        coarse = order[::2] if Cs.size >= 9 and steps.size and np.max(steps) <= 0.35 else order
        out = np.full((len(splits), Cs.size), np.nan)

        def score(x, group, where):
            pred = solver.predictions(x)
            for i, (f, j) in enumerate(zip(group, where)):
                out[f, j] = float(np.mean(pred[i, held[f]] == y_idx[held[f]]))

        with torch_threads(solve_threads(n * X.shape[1] * K * len(splits))) as previous:
            solver = SubsetSolver(X, y_idx.astype(np.int64), K, masks, device=self.device,
                                  memory_budget=self.memory_budget)
            solver.problem.hessian_threads = previous  # one large product: every thread the caller had
            active = np.arange(len(splits))
            screen = {}  # (fold, position in Cs) -> the screen's solution
            last = {}  # fold -> the path's last two (C, solution)
            for lo in range(0, coarse.size, SCREEN_BLOCK):
                js = coarse[lo:lo + SCREEN_BLOCK]
                c = torch.as_tensor(model_C[js], dtype=torch.float64, device=solver.device)
                x0 = torch.cat([path_start(last.get(f, []), c, solver.P).to(solver.torch_dtype) for f in active])
                group, where = np.repeat(active, js.size), np.tile(js, active.size)
                x, _, _ = solver.solve(x0, model_C[where], group, tol=max(float(self.tol), SCREEN_TOL),
                                       max_iter=self.max_iter, precision=screen_precision)
                score(x, group, where)
                for i, (f, j) in enumerate(zip(group, where)):
                    screen[f, j] = x[i]
                    last[f] = (last.get(f, []) + [(float(model_C[j]), x[i])])[-2:]
                active = np.array([f for f in active if not past_the_peak(Cs[coarse], out[f, coarse], held[f].size)],
                                  dtype=int)
                if active.size == 0:
                    break
            rank_of = np.empty(Cs.size, dtype=int)
            rank_of[order] = np.arange(Cs.size)
            group, where, starts = [], [], []
            for f in range(len(splits)):
                best = int(np.nanargmax(out[f]))
                if flat_top(out[f, coarse], int(np.flatnonzero(coarse == best)[0]), held[f].size):
                    continue
                reached = np.array([j for j in coarse if (f, j) in screen])
                clearly = clearly_below(out[f, best], held[f].size, PAST_PEAK_Z)
                for i in order[max(0, rank_of[best] - 1):rank_of[best] + 2]:
                    if i != best and out[f, i] < clearly:  # a neighbour clearly below the best cannot overtake it
                        continue
                    near = reached[np.argmin(np.abs(rank_of[reached] - rank_of[i]))]
                    group.append(f)
                    where.append(int(i))
                    starts.append(screen[f, near])
            if group:
                x, _, _ = solver.solve(torch.stack(starts), model_C[where], group, tol=float(self.tol),
                                       max_iter=self.max_iter, precision=precision)
                score(x, group, where)
        return out


def accuracies(X, y_idx, coefs, intercepts) -> np.ndarray:
    """Accuracy (n_C,) of each of a stack of linear models (:func:`path_scores`) on rows ``X`` (an array,
    or rows on disk), ``VAL_CHUNK_ROWS`` at a time; ``y_idx`` are class indices."""
    hits = np.zeros(coefs.shape[0])
    for start in range(0, int(X.shape[0]), VAL_CHUNK_ROWS):
        rows = np.asarray(X[start:start + VAL_CHUNK_ROWS], dtype=np.float32)
        hits += (class_index(path_scores(rows, coefs, intercepts)) == y_idx[None, start:start + rows.shape[0]]).sum(1)
    return hits / max(1, int(X.shape[0]))


def flat_top(scores, best: int, n_val: int) -> bool:
    """Whether the neighbours of ``scores[best]`` (scores along increasing C; NaN: not fitted) score within
    one standard error of it, sqrt(p (1 - p) / n_val) at its accuracy p.

    Examples
    --------
    >>> flat_top([0.60, 0.70, 0.69, np.nan], 1, 1000)
    False
    >>> flat_top([0.695, 0.70, 0.69, np.nan], 1, 1000)
    True
    """
    scores = np.asarray(scores, dtype=float)
    p = scores[best]
    floor = p - np.sqrt(max(p * (1.0 - p), 0.0) / max(1, int(n_val)))
    near = [scores[j] for j in (best - 1, best + 1) if 0 <= j < scores.size and np.isfinite(scores[j])]
    return bool(near) and all(v >= floor for v in near)


class BatchedLogisticRegressionCV(LogisticProbaMixin, ClassifierMixin, BaseEstimator):
    """Fit the whole C grid at once and keep the C with the best validation accuracy.

    ``fit(X, y)`` holds out a stratified ``val_fraction`` of the rows (seeded by ``random_state``;
    the rows :func:`~transferlab.classifiers.protocol.stratified_holdout` draws) to choose C on,
    then refits on all rows at that C; ``fit(X, y, X_val, y_val)`` chooses on the given validation
    rows instead. When no holdout is possible (say one row per class, or rows in an
    ``h5py.Dataset``), no C is chosen on data: the grid's C closest to 1 is used and
    ``selection_`` says why.

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
    tol, max_iter, device, memory_budget, block_size, precision : see :func:`fit_logreg_path`.

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
                 device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET, block_size=4, stop_past_peak=True,
                 precision="auto"):
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
        self.precision = precision

    def fit(self, X, y, X_val=None, y_val=None, init=None, preconditioner="auto"):
        """Choose C on validation rows (given, or held out of ``X`` by :func:`stratified_holdout`), then
        refit (see ``refit``).

        ``init``: ``(coefs, intercepts)`` per C to start the path from; ``preconditioner``: a name or
        an earlier path's preconditioner (see :func:`fit_logreg_path`). The refit starts from the
        chosen solution and reuses the path's preconditioner.
        """
        X, classes, y_idx = self._validate_fit(X, y)
        Cs = np.logspace(-6, 5, 12) if self.Cs is None else np.asarray(self.Cs, dtype=np.float64).ravel()
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        fit_rows = None
        if X_val is not None:
            X_val, val_idx = validation_rows(self, classes, X_val, y_val)
            X_fit, y_fit, self.selection_ = X, y_idx, "given validation rows"
        else:
            if out_of_core(X):
                reason = "rows read from disk are not held out: give X_val (or use out_of_core.select_logreg)"
            else:
                tr, va, reason = stratified_holdout(y_idx, self.val_fraction, self.random_state)
            if reason is None:
                X_fit, y_fit, X_val, val_idx = X[tr], y_idx[tr], X[va], y_idx[va]
                self.selection_ = f"held-out fraction {self.val_fraction:g} (seed {self.random_state})"
                fit_rows = "all"
            else:
                X_fit, y_fit, X_val = X, y_idx, None
                self.selection_ = f"none: {reason}; C closest to 1"
        scores = np.full(Cs.size, np.nan)

        def score_block(where, W, b):  # validation accuracy of each block as it is solved
            scores[where] = accuracies(X_val, val_idx, W, b)
            return bool(self.stop_past_peak) and past_the_peak(Cs, scores, val_idx.size)

        stop = None if X_val is None else score_block
        self.path_ = fit_logreg_path(X_fit, y_fit, Cs, device=self.device, tol=self.tol, max_iter=self.max_iter,
                                     memory_budget=self.memory_budget, block_size=self.block_size, stop=stop,
                                     init=init, preconditioner=preconditioner, precision=self.precision)
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
                                    init=(self.coef_, self.intercept_), precision=self.precision,
                                    preconditioner=self.path_.preconditioner or "auto")
            self.coef_, self.intercept_, self.n_iter_ = final.coefs[0], final.intercepts[0], final.n_iter.copy()
        return self

    def estimator_for(self, C) -> TorchLogisticRegression:
        """A fitted :class:`TorchLogisticRegression` holding the grid's solution at ``C`` (fitted on the
        training rows)."""
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
