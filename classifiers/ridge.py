"""The least-squares probe (``ridge``): a whole L2 grid for the price of one eigendecomposition.

For every ``alpha`` of a grid it solves scikit-learn's ``RidgeClassifier`` problem (targets +1 for
the class, -1 otherwise; one column for two classes; intercept not penalised)::

    min_W,b  ||Y - X W - b||^2 + alpha ||W||^2

With centred rows ``X_c`` and the eigendecomposition ``X_c^T X_c = V diag(lam) V^T``, the solution
is ``W(alpha) = V diag(1 / (lam + alpha)) V^T X_c^T Y_c``: after one pass over the rows (the Gram
matrix) and one ``eigh``, each further alpha costs a (D, K) product. With fewer rows than
dimensions (few-shot) the (N, N) kernel ``X_c X_c^T`` is decomposed instead, which is the same
solution in the row space. This is the few-shot linear probe of big_vision and what scikit-learn's
``RidgeClassifierCV`` does with its efficient leave-one-out; here the alphas are scored on
validation rows, like every other head (:mod:`transferlab.classifiers.protocol`).

It is the fast head for screening (low-shot sweeps, ``advise``); on CIFAR-10 features a tuned
logistic regression is usually a few points more accurate (``bench/README.md`` has the figures).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import validate_data

from transferlab.util import UserInputError

from ._linear import LinearClassifierMixin

_CHUNK = 8192  # rows per Gram block (bounds the float64 copy)


class _Spectral:
    """One eigendecomposition of the centred rows, from which every alpha's solution follows."""

    def __init__(self, X, y_idx, n_classes):
        X = np.asarray(X)
        n, d = X.shape
        self.mu = X.mean(0, dtype=np.float64)
        T = np.full((n, n_classes), -1.0)
        T[np.arange(n), y_idx] = 1.0
        if n_classes == 2:
            T = T[:, 1:]
        self.t_mean = T.mean(0)
        Tc = T - self.t_mean
        if n >= d:  # primal: (D, D) Gram in float64 (float32 loses 1e-3 of the coefficients at small alpha)
            G = np.zeros((d, d))
            XtT = np.zeros((d, Tc.shape[1]))
            for s in range(0, n, _CHUNK):
                c = X[s:s + _CHUNK].astype(np.float64) - self.mu
                G += c.T @ c
                XtT += c.T @ Tc[s:s + _CHUNK]
            self.lam, self.V = np.linalg.eigh(G)
            self.P = self.V.T @ XtT  # (r, K')
        else:  # dual: (N, N) kernel; V spans the rows
            Xc = X.astype(np.float64) - self.mu
            s, U = np.linalg.eigh(Xc @ Xc.T)
            keep = s > max(s.max(), 1e-300) * 1e-12
            self.lam = s[keep]
            self.V = Xc.T @ U[:, keep] / np.sqrt(self.lam)
            self.P = self.V.T @ (Xc.T @ Tc)
        self.lam = np.clip(self.lam, 0.0, None)

    def coefs(self, alpha):
        """(K', D) coefficients and (K',) intercepts at one alpha."""
        W = self.V @ (self.P / (self.lam + alpha)[:, None])
        return W.T, self.t_mean - self.mu @ W

    def scores(self, X, alphas):
        """Decision values (n_alpha, N, K') of every alpha's model on rows X, from one rotation."""
        Z = (np.asarray(X, dtype=np.float64) - self.mu) @ self.V
        return np.stack([Z @ (self.P / (self.lam + a)[:, None]) for a in alphas]) + self.t_mean


def _check_alphas(alphas) -> np.ndarray:
    alphas = np.asarray(alphas, dtype=np.float64).ravel()
    if alphas.size == 0 or not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise UserInputError(f"ridge alphas must be positive finite numbers, got {alphas.tolist()}")
    return alphas


class RidgeProbe(LinearClassifierMixin, ClassifierMixin, BaseEstimator):
    """Least-squares linear probe: scikit-learn's ``RidgeClassifier(alpha)`` solved spectrally.

    Same objective, ``coef_``, ``intercept_`` and ``classes_`` as ``RidgeClassifier``; passes
    scikit-learn's estimator checks. ``score_grid`` scores a whole alpha grid from one
    eigendecomposition (the selection protocol uses it).

    Parameters
    ----------
    alpha : float
        L2 penalty on the coefficients (not on the intercept).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> X, y = load_digits(return_X_y=True)
    >>> RidgeProbe(alpha=10.0).fit(X[:1000], y[:1000]).score(X[1000:], y[1000:]) > 0.85
    True
    """

    def __init__(self, alpha=1.0):
        self.alpha = alpha

    def fit(self, X, y):
        X, classes, y_idx = self._validate_fit(X, y)
        alpha = float(_check_alphas([self.alpha])[0])
        self.classes_ = classes
        self.coef_, self.intercept_ = _Spectral(X, y_idx, classes.size).coefs(alpha)
        return self

    def score_grid(self, alphas, X, y, X_val, y_val) -> list:
        """Validation accuracy at every alpha of ``alphas``, from one eigendecomposition of ``X``."""
        alphas = _check_alphas(alphas)
        X, classes, y_idx = self._validate_fit(X, y)
        X_val = validate_data(self, X_val, reset=False, dtype=[np.float64, np.float32])
        S = _Spectral(X, y_idx, classes.size).scores(X_val, alphas)
        pred = classes[(S[..., 0] > 0).astype(int)] if classes.size == 2 else classes[S.argmax(-1)]
        return [float(a) for a in (pred == np.asarray(y_val)[None, :]).mean(1)]
