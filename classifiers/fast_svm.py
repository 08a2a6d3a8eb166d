"""Batched linear SVM: every C of a grid, every class, in one torch solve.

For every C it minimises, for each class k against the rest (one problem for two classes), the
primal of scikit-learn's ``LinearSVC`` (squared hinge, L2, ``dual`` irrelevant)::

    0.5 * ||w_k||^2 + C * sum_i max(0, 1 - t_ik (w_k . x_i + b_k))^2,    t_ik = +1 if y_i = k else -1

with one difference: the intercept is not penalised (``LinearSVC`` penalises it as a constant
feature of value ``intercept_scaling = 1``; with hundreds of rows per class this changes little).

The squared hinge is differentiable, so the whole grid runs on the batched, preconditioned L-BFGS
of :mod:`classifiers._batched_lbfgs` that the logistic head uses (same row source, same basis of the
centred Gram matrix, same warm starts along C). The Hessian of problem k is
``I + 2 C X_A^T X_A`` over its active rows A (margin < 1); the preconditioner replaces it by
``I + h_k C X_c^T X_c`` with ``h_k`` twice the fraction of active rows, which is exact at W = 0.
Convergence uses the logistic head's criterion (max |gradient| / (C N) below ``tol``).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import validate_data

from ._batched_lbfgs import Problem
from ._linear import GridWarmStartMixin, LinearClassifierMixin
from ._path import DEFAULT_MEMORY_BUDGET, LogRegPath, fit_logreg_path


class _SquaredHinge(Problem):
    """One-vs-rest squared-hinge problems, one stack per C, in :class:`Problem`'s (A, b) coordinates."""

    supports_hessian = False  # Problem.hessian is the logistic loss's

    def __init__(self, source, y_idx, n_classes, mu, V, lam, basis=None, lowrank=None):
        import torch

        super().__init__(source, y_idx, 1 if n_classes == 2 else n_classes, mu, V, lam, basis, lowrank)
        rows = torch.arange(n_classes, device=source.device).view(-1, 1) == self.y.view(1, -1)  # (classes, N)
        self.t = (rows[1:] if n_classes == 2 else rows).to(source.dtype) * 2 - 1  # (K, N) of +-1

    def evaluate(self, x, C, ids=None):
        """Objective (g,) float64, gradient (g, P) and per-problem curvature (g, K) at x (g, P)."""
        import torch

        g, K = x.shape[0], self.K
        A, b = self.split(x)
        WT = A.reshape(g * K, self.r)
        if self.V is not None:
            WT = WT @ self.V.T
        offset = (b.reshape(g * K) - WT @ self.mu).unsqueeze(1)
        loss = torch.zeros(g, dtype=torch.float64, device=x.device)
        RtX = torch.zeros_like(WT)
        Rsum = torch.zeros(g * K, dtype=WT.dtype, device=x.device)
        active = torch.zeros(g, K, dtype=torch.float64, device=x.device)
        for start, stop, Xc in self.source.chunks():
            n = stop - start
            t = self.t[:, start:stop].unsqueeze(0)  # (1, K, n)
            Z = torch.addmm(offset, WT, Xc.T).view(g, K, n)
            m = (1.0 - t * Z).clamp_min(0.0)
            loss += (m * m).sum((1, 2), dtype=torch.float64)
            active += (m > 0).sum(2, dtype=torch.float64)
            R = (-2.0 * t * m).view(g * K, n)
            RtX.addmm_(R, Xc)
            Rsum += R.sum(1)
        f, grad = self.assemble(A, C, loss, RtX, Rsum)
        h = (2.0 * active / self.source.n).clamp_min(2.0 / self.source.n).to(x.dtype)
        return f, grad, h

    def precondition(self, q, C, h):
        """Apply the inverse of ``I + h_k C X_c^T X_c`` per problem (no coupling between classes)."""
        import torch

        qA, qb = self.split(q)
        hC = (h * C.view(-1, 1)).unsqueeze(-1)  # (g, K, 1)
        if self.lowrank is None:
            outA = qA / (1.0 + hC * self.lam.view(1, 1, -1))
        else:
            Vk, lam_k, rest = self.lowrank
            shrink = 1.0 / (1.0 + hC * lam_k.view(1, 1, -1)) - 1.0 / (1.0 + hC * rest)
            outA = qA / (1.0 + hC * rest) + ((qA @ Vk) * shrink) @ Vk.T
        outb = qb / (hC.squeeze(-1) * self.source.n).clamp_min(1e-12)
        return torch.cat([outA.reshape(q.shape[0], -1), outb], 1)


def fit_svm_path(X, y, Cs, *, device: str = "cpu", tol: float = 1e-4, max_iter: int = 100, history_size: int = 10,
                 block_size: int = 4, memory_budget: int = DEFAULT_MEMORY_BUDGET, preconditioner="auto",
                 num_threads: int | None = None, init=None) -> LogRegPath:
    """Fit the one-vs-rest squared-hinge linear SVM for every C of a grid in one batched solve.

    Parameters are those of :func:`classifiers._path.fit_logreg_path`; ``y`` holds integer
    labels 0..K-1. Returns the per-C coefficients (n_C, K', D) and intercepts (n_C, K') in the order
    of ``Cs``, K' = 1 for two classes (decision > 0: the second class), in the same container.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> fit_svm_path(X / 16, y, [0.01, 1.0]).coefs.shape
    (2, 10, 64)
    """
    return fit_logreg_path(X, y, Cs, device=device, tol=tol, max_iter=max_iter, history_size=history_size,
                           block_size=block_size, memory_budget=memory_budget, preconditioner=preconditioner,
                           num_threads=num_threads, problem_cls=_SquaredHinge, init=init)


class TorchLinearSVC(GridWarmStartMixin, LinearClassifierMixin, ClassifierMixin, BaseEstimator):
    """Linear SVM (squared hinge, one-vs-rest) at one C, solved by :func:`fit_svm_path`.

    A drop-in for ``sklearn.svm.LinearSVC(C=C)`` (``coef_``, ``intercept_``, ``classes_``,
    ``decision_function``; intercept unpenalised) that passes scikit-learn's estimator checks;
    ``score_grid`` scores a whole C grid from one batched solve (the selection protocol uses it).

    Parameters
    ----------
    C : float
        Inverse regularisation strength.
    tol, max_iter, device, memory_budget : see :func:`classifiers._path.fit_logreg_path`.
    """

    def __init__(self, C=1.0, *, tol=1e-4, max_iter=100, device="cpu", memory_budget=DEFAULT_MEMORY_BUDGET):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.memory_budget = memory_budget

    def _path(self, X, y_idx, Cs, **start):
        return fit_svm_path(X, y_idx, Cs, device=self.device, tol=self.tol, max_iter=self.max_iter,
                            memory_budget=self.memory_budget, **start)

    def fit(self, X, y, coef_init=None, intercept_init=None, preconditioner_init=None):
        """Fit at ``C``, optionally started from a model and a preconditioner (see
        :meth:`classifiers.fast_logreg.TorchLogisticRegression.fit`; the protocol passes
        :meth:`refit_init`'s)."""
        X, classes, y_idx = self._validate_fit(X, y)
        path = self._path(X, y_idx, [self.C], **self._start(classes, coef_init, intercept_init, preconditioner_init))
        self.classes_ = classes
        self.coef_, self.intercept_ = path.coefs[0], path.intercepts[0]
        self.n_iter_ = path.n_iter.copy()
        return self

    def score_grid(self, Cs, X, y, X_val, y_val) -> list:
        """Validation accuracy at every C of ``Cs``, from one batched solve on ``X``; afterwards
        :meth:`refit_init` starts a refit from its solution and preconditioner."""
        X, classes, y_idx = self._validate_fit(X, y)
        X_val = validate_data(self, X_val, reset=False, dtype=[np.float64, np.float32])
        path = self._path(X, y_idx, Cs)
        self._solutions = {float(C): (path.coefs[i], path.intercepts[i]) for i, C in enumerate(path.Cs)}
        self._preconditioner = path.preconditioner
        pred = path.predict(X_val)  # labels 0..K-1
        return [float(a) for a in (classes[pred] == np.asarray(y_val)[None, :]).mean(1)]
