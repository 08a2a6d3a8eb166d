"""Training-free scores of how well a layer's features suit a labelled target task.

``knn_accuracy``
    Accuracy of a k-nearest-neighbour vote (cosine similarity, features L2-normalised) of the
    validation rows among the training rows, by the k-NN head's own search
    (:func:`transferlab.classifiers.fast_knn.cosine_neighbours`). No fitting; large studies of
    transferability metrics found this plain evaluator predicts transfer better than most
    published scores.
``logme``
    LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
    Learning"): the log marginal evidence, per row, of a Bayesian linear regression from the
    features to each class's one-hot target, with the prior precision ``alpha`` and the noise
    precision ``beta`` set by the evidence-maximising fixed-point iteration (MacKay), averaged over
    classes. One eigendecomposition of the features' Gram matrix (as the authors' code does) serves
    every class and every iteration. Higher is better;
    values are comparable between layers of one data set, not across data sets.

For one target ``y`` (n rows) and features ``F`` (n x d) the model is
``y ~ N(0, I/beta + F F^T / alpha)``; with ``F = U S V^T`` and ``sigma = S**2`` padded with zeros to
``d`` entries, the evidence is::

    n/2 log beta + d/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 ||m||^2
        - 1/2 sum_j log(alpha + beta sigma_j),      m = beta (alpha I + beta F^T F)^-1 F^T y

and the fixed point is ``gamma = sum beta sigma / (alpha + beta sigma)``, ``alpha = gamma / ||m||^2``,
``beta = (n - gamma) / ||F m - y||^2``.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_features, check_labels


class Spectrum:
    """The eigendecomposition of the Gram matrix of features ``F`` (n x d), float64: of ``F^T F`` when
    n >= d, else of ``F F^T``; ``sigma`` are the squared singular values padded with zeros to d
    entries. One serves every class and every iteration: :meth:`target` reduces a target to its
    projections, after which the evidence costs O(d) (no pass over the rows)."""

    def __init__(self, F):
        F = np.asarray(F, dtype=np.float64)
        self.F, (self.n, self.d) = F, F.shape
        lam, self.basis = np.linalg.eigh(F.T @ F if self.n >= self.d else F @ F.T)
        lam = np.clip(lam, 0.0, None)
        self.sigma = np.zeros(self.d)
        self.sigma[: lam.size] = lam
        self.r = lam.size

    def target(self, y) -> tuple[np.ndarray, float]:
        """``(p, |y|^2)``: ``p = V^T F^T y`` (= S U^T y, in the order of ``sigma``) for a target ``y`` (n,)."""
        y = np.asarray(y, dtype=np.float64)
        if self.n >= self.d:
            p = self.basis.T @ (self.F.T @ y)
        else:
            p = np.sqrt(self.sigma[: self.r]) * (self.basis.T @ y)
        return p, float(y @ y)


def logme_evidence(F: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Log evidence per row of the target ``y`` under features ``F`` at given precisions (float64)."""
    spec = Spectrum(F)
    return _evidence(spec, *spec.target(y), alpha, beta)[0]


def _evidence(spec, p, yy, alpha, beta):
    """Evidence per row, ||m||^2 and ||F m - y||^2 from the projections ``p`` and ``|y|^2`` of a target."""
    n, d, sigma = spec.n, spec.d, spec.sigma
    m_v = beta * p / (alpha + beta * sigma[: p.size])  # m in the eigenbasis
    m2 = float(m_v @ m_v)
    # ||F m - y||^2 = |y|^2 - 2 y^T F m + m^T F^T F m, in the eigenbasis
    res2 = max(yy - 2.0 * float(p @ m_v) + float(sigma[: p.size] @ (m_v * m_v)), 0.0)
    ev = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * res2
          - alpha / 2 * m2 - 0.5 * np.sum(np.log(alpha + beta * sigma)))
    return ev / n, m2, res2


def fixed_point(spec: Spectrum, y, max_iter=11, tol=1e-3):
    """MacKay's fixed point for ``(alpha, beta)`` of a target ``y`` (n,) under :class:`Spectrum` ``spec``."""
    p, yy = spec.target(y)
    n, sigma = spec.n, spec.sigma
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        _, m2, res2 = _evidence(spec, p, yy, alpha, beta)
        gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
        new_alpha = gamma / max(m2, 1e-12)
        new_beta = max(n - gamma, 1e-12) / max(res2, 1e-12)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return alpha, beta


def logme(features, labels) -> float:
    """LogME of features for integer class labels (higher: the classes are easier to read linearly).

    Parameters
    ----------
    features : array (N, D)
    labels : array (N,) of integer classes

    Returns
    -------
    float
        Mean over classes of the maximised log evidence per row.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 30)
    >>> good = np.eye(3)[y] * 3 + rng.normal(size=(90, 3)) * 0.3
    >>> logme(good, y) > logme(rng.normal(size=(90, 3)), y)
    True
    """
    F = check_features(features).astype(np.float64)
    y = check_labels(labels, F.shape[0])
    spec = Spectrum(F)
    scores = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        alpha, beta = fixed_point(spec, target)
        scores.append(_evidence(spec, *spec.target(target), alpha, beta)[0])
    return float(np.mean(scores))


def knn_accuracy(X_train, y_train, X_val, y_val, k: int = 10) -> float:
    """Accuracy of a cosine k-NN majority vote (ties to the nearer neighbours) of validation rows.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> knn_accuracy(X, [0, 0, 1, 1], np.array([[1.0, 0.2], [0.2, 1.0]]), [0, 1], k=1)
    1.0
    """
    from .fast_knn import cosine_neighbours

    A = check_features(X_train, "training features")
    B = check_features(X_val, "validation features")
    ya = check_labels(y_train, A.shape[0])
    yb = check_labels(y_val, B.shape[0])
    k = int(min(max(1, k), A.shape[0]))
    classes = np.unique(ya)
    _, idx = cosine_neighbours(B, A, k)  # the k-NN head's search: nearest first
    lab = np.searchsorted(classes, ya[idx])
    votes = np.zeros((B.shape[0], classes.size))
    rank = 1.0 + 1e-6 * (k - np.arange(k))  # a tiny weight by rank breaks ties toward the nearer neighbours
    np.add.at(votes, (np.arange(B.shape[0])[:, None], lab), rank[None, :])
    return float(np.mean(classes[votes.argmax(1)] == yb))
