"""k-NN with a cosine neighbour search in torch, and a k grid scored from one search.

:class:`TorchKNeighborsClassifier` is scikit-learn's ``KNeighborsClassifier`` (same parameters,
attributes and votes) whose brute-force cosine search runs as float32 matrix products in torch,
in row blocks of bounded memory, keeping the k largest similarities of each block (``torch.topk``);
any other metric, algorithm or query falls back to scikit-learn's search. Its ``score_grid``
scores every k of a grid from one search for the largest k: the k nearest neighbours are the first
k of the largest k's, so each k's vote is the one ``predict`` would cast.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.validation import check_is_fitted

BLOCK_ELEMENTS = 1 << 24  # similarities held at once (64 MB of float32): query rows per block = this / fitted rows


class TorchKNeighborsClassifier(KNeighborsClassifier):
    """``KNeighborsClassifier`` whose brute cosine search is a blocked torch matrix product.

    Distances are scikit-learn's cosine distances, ``1 - cos``, clipped to [0, 2]; neighbours come
    sorted by distance. ``score_grid(values, X_train, y_train, X_val, y_val)`` gives the validation
    accuracy of every ``n_neighbors`` in ``values`` from one search (:mod:`classifiers.protocol`).
    """

    def _torch_search(self, X) -> bool:
        return (self.metric == "cosine" and getattr(self, "_fit_method", None) == "brute" and X is not None
                and isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == self.n_features_in_
                and X.dtype.kind == "f" and np.ndim(self._y) == 1)

    def kneighbors(self, X=None, n_neighbors=None, return_distance=True):
        check_is_fitted(self)
        if not self._torch_search(X):
            return super().kneighbors(X, n_neighbors, return_distance)
        k = self.n_neighbors if n_neighbors is None else n_neighbors
        if not isinstance(k, (int, np.integer)) or not 0 < k <= self.n_samples_fit_:
            return super().kneighbors(X, n_neighbors, return_distance)  # scikit-learn's error message
        dist, ind = cosine_neighbours(X, self._fit_X, int(k))
        return (dist, ind) if return_distance else ind

    def score_grid(self, values, X_train, y_train, X_val, y_val) -> list[float]:
        """Validation accuracy of every ``n_neighbors`` in ``values``, fitted on the training rows.

        One neighbour search for the largest k (capped at the training rows, as
        :func:`classifiers.heads.adapt_to_data` caps a single fit); the k-th vote uses the first k.
        """
        ks = [min(int(k), len(y_train)) for k in values]
        est = clone(self).set_params(n_neighbors=max(ks)).fit(X_train, y_train)
        dist, ind = est.kneighbors(X_val)
        labels = est._y[ind]  # class indices into est.classes_
        n_classes, rows = len(est.classes_), np.arange(len(X_val))[:, None]
        scores = []
        for k in ks:
            w = np.ones(dist[:, :k].shape) if self.weights in (None, "uniform") else vote_weights(dist[:, :k],
                                                                                                 self.weights)
            votes = np.bincount((rows * n_classes + labels[:, :k]).ravel(), weights=w.ravel(),
                                minlength=len(X_val) * n_classes).reshape(len(X_val), n_classes)
            scores.append(float(np.mean(est.classes_[np.argmax(votes, axis=1)] == y_val)))
        return scores


def vote_weights(dist: np.ndarray, weights) -> np.ndarray:
    """The neighbours' vote weights, as scikit-learn's k-NN computes them: ``1 / distance`` (a row
    with a zero distance gives its zero-distance neighbours 1 and the others 0) or ``weights(dist)``."""
    if callable(weights):
        return np.asarray(weights(dist))
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    inf = np.isinf(w)
    exact = inf.any(axis=1)
    w[exact] = inf[exact]
    return w


def cosine_neighbours(X: np.ndarray, F: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distances (float32) and indices of the ``k`` rows of ``F`` nearest each row of ``X``, sorted.

    Rows are L2-normalised (a zero row stays zero, at distance 1 from everything), then compared in
    float32 blocks of :data:`BLOCK_ELEMENTS` similarities.
    """
    import torch

    def unit(A):
        A = torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32))
        return A / A.norm(dim=1, keepdim=True).clamp_min(np.finfo(np.float32).tiny)

    Q, R = unit(X), unit(F)
    dist = np.empty((len(Q), k), np.float32)
    ind = np.empty((len(Q), k), np.int64)
    step = max(1, BLOCK_ELEMENTS // max(1, len(R)))
    with torch.inference_mode():
        for start in range(0, len(Q), step):
            sim, idx = torch.topk(Q[start:start + step] @ R.T, k, dim=1)  # sorted, largest first
            dist[start:start + step] = (1.0 - sim).clamp_(0.0, 2.0).numpy()
            ind[start:start + step] = idx.numpy()
    return dist, ind
