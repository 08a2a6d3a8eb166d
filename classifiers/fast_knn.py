"""k-NN with a cosine neighbour search in torch, and a k grid scored from one search.

:class:`TorchKNeighborsClassifier` is scikit-learn's ``KNeighborsClassifier`` (same parameters,
attributes and votes) whose brute-force cosine search runs in torch, in row blocks of bounded memory:
a bfloat16 matrix product picks candidates, their float32 similarities pick the neighbours, and a
proven bound sends any query the candidates might have missed to the float32 search
(:func:`cosine_neighbours`), so the neighbours are the float32 search's. Any other metric, algorithm
or query falls back to scikit-learn's search. Its ``score_grid`` scores every k of a grid from one
search for the largest k: the k nearest neighbours are the first k of the largest k's, so each k's
vote is the one ``predict`` would cast.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.validation import check_is_fitted

from ._threads import torch_threads

BLOCK_ELEMENTS = 1 << 24  # similarities held at once (64 MB of float32): query rows per block = this / fitted rows
EXTRA_CANDIDATES = 16  # candidates kept per query beyond k by the bfloat16 pass (cosine_neighbours)
OUTPUT_ROUNDING = 2.0 ** -7  # |float32 sum - its bfloat16 result| <= this * |result|: one bfloat16 ulp, any rounding
BF16_CHUNK_ROWS = 256  # rows per chunk of bf16_rows (its buffers: 2 x 256 x d float32)
FLOAT32_SLACK = 2.0 ** -22  # per dimension: covers two float32 dot products of unit rows (d * 2**-24 each) and centring


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

    Rows are L2-normalised (a zero row stays zero, at distance 1 from everything). The answer is the
    float32 search's (ties aside), found in two passes where ``F`` has more rows than candidates: a
    bfloat16 product keeps ``k + m`` candidates per query (:func:`candidate_search`), reranked by their
    float32 similarities; a query whose k-th similarity is not above a proven ceiling on every row
    left out is searched again in float32. Blocks hold :data:`BLOCK_ELEMENTS` similarities.
    """
    import torch

    Q, R = unit_rows(X), unit_rows(F)
    dist = np.empty((len(Q), k), np.float32)
    ind = np.empty((len(Q), k), np.int64)
    with torch.inference_mode():
        exact = candidate_search(Q, R, k, dist, ind) if k + EXTRA_CANDIDATES < len(R) else np.arange(len(Q))
        step = max(1, BLOCK_ELEMENTS // max(1, len(R)))
        for start in range(0, len(exact), step):
            rows = exact[start:start + step]
            sim, idx = torch.topk(Q[torch.from_numpy(rows)] @ R.T, k, dim=1)  # sorted, largest first
            dist[rows] = (1.0 - sim).clamp_(0.0, 2.0).numpy()
            ind[rows] = idx.numpy()
    return dist, ind


def unit_rows(A):
    """float32 torch rows of ``A`` scaled to unit L2 norm (a zero row stays zero); rows already unit to
    within float32 rounding (the head's own L2 step) are used as they are, without a copy."""
    import torch

    A = torch.from_numpy(np.ascontiguousarray(A, dtype=np.float32))
    norm = torch.linalg.vector_norm(A, dim=1, keepdim=True)
    if len(A) and float((norm - 1).abs().max()) <= 1e-6:
        return A
    return A / norm.clamp_min(np.finfo(np.float32).tiny)


def candidate_search(Q, R, k, dist, ind) -> np.ndarray:
    """Fill ``dist`` and ``ind`` for unit rows ``Q`` against unit rows ``R``; return the queries to be
    searched again in float32.

    Per block of queries: ``s~ = bf16(q) @ bf16(R - mean).T`` (centring moves every similarity of a
    query by ``q . mean``, so the order is the same, and shrinks the values and their rounding); the
    ``k + m`` largest are the candidates, the ``k`` largest of their float32 similarities the answer.
    Every row left out has ``s~ <= a``, the smallest candidate's, so its similarity is at most
    ``a + OUTPUT_ROUNDING |a| + excluded_bound + q . mean``; the answer stands when its k-th
    similarity, less float32 rounding (``FLOAT32_SLACK``), is above that. ``m`` starts at
    :data:`EXTRA_CANDIDATES` and doubles after a block where more than one query in 16 failed.
    """
    import torch

    mu = R.mean(dim=0)
    Rb, r_norm, r_err = bf16_rows(R, mu)
    r_norm, r_err = (r_norm + r_err).max(), r_err.max()  # |r~| <= |r| + |r~ - r|
    Qb, q_norm, q_err = bf16_rows(Q)
    bound = excluded_bound(q_norm, q_err, r_norm, r_err, Q.shape[1]) + Q @ mu  # q . mu: see above
    slack = FLOAT32_SLACK * R.shape[1]
    failed, m = [], EXTRA_CANDIDATES
    step = min(512, max(1, BLOCK_ELEMENTS // len(R)))  # 512 rows: a small buffer, few blocks
    products = torch.empty((min(step, len(Q)), len(R)), dtype=torch.bfloat16)  # one buffer for every block
    for start in range(0, len(Q), step):
        rows = slice(start, min(start + step, len(Q)))
        q = Q[rows]
        approx = torch.mm(Qb[rows], Rb.T, out=products[:len(q)])
        approx, cand = torch.topk(approx, min(k + m, len(R)), dim=1)
        a = approx[:, -1].float()  # the smallest candidate's
        ceiling = a + OUTPUT_ROUNDING * a.abs() + bound[rows]
        if k + m >= len(R):
            ceiling.fill_(-np.inf)  # no row left out
        cand = cand.sort(dim=1).values  # a sparse pattern's column order
        sim, order = torch.topk(candidate_products(q, R, cand), k, dim=1)  # sorted, largest first
        bad = np.flatnonzero((sim[:, -1] - slack <= ceiling).numpy())
        failed.append(bad + start)
        dist[rows] = (1.0 - sim).clamp_(0.0, 2.0).numpy()
        ind[rows] = torch.gather(cand, 1, order).numpy()
        if 16 * len(bad) > len(q):
            m *= 2
    return np.concatenate(failed)


def bf16_rows(A, mu=None):
    """``bf16(A - mu)`` (``mu`` None: ``A``), each row's norm before rounding and each row's rounding
    error norm (exact differences), in chunks of :data:`BF16_CHUNK_ROWS` rows through two small reused
    buffers, on one torch thread: the operations are memory-bound (a second thread gains little), fresh
    memory is what a first call pays most for, and a single-threaded operation never waits at a barrier
    for a thread the scheduler took away (a loaded machine). Torch's thread count is set back after."""
    import torch

    Ab = torch.empty(A.shape, dtype=torch.bfloat16)
    norm, err = torch.empty(len(A)), torch.empty(len(A))
    rows = max(1, min(len(A), BF16_CHUNK_ROWS))
    value, back = torch.empty((rows, A.shape[1])), torch.empty((rows, A.shape[1]))
    with torch_threads(1):
        for s in range(0, len(A), rows):
            n = min(rows, len(A) - s)
            v, b = value[:n], back[:n]
            if mu is None:
                v.copy_(A[s:s + n])
            else:
                torch.sub(A[s:s + n], mu, out=v)
            Ab[s:s + n].copy_(v)
            b.copy_(Ab[s:s + n]).sub_(v)  # exact: a value and its rounding
            torch.linalg.vector_norm(v, dim=1, out=norm[s:s + n])
            torch.linalg.vector_norm(b, dim=1, out=err[s:s + n])
    return Ab, norm, err


def excluded_bound(q_norm, q_err, r_norm, r_err, d):
    """Per query ``q`` (its norm ``q_norm``, the norm of its bfloat16 rounding error ``q_err``), a bound
    on ``|q . r - fl32(bf16(q) . bf16(r))|`` over ``d``-dimensional rows ``r`` whose bfloat16 values
    have norms at most ``r_norm`` and rounding errors at most ``r_err``.

    With ``q~ = q + dq`` and ``r~ = r + dr``, ``q~ . r~ - q . r = dq . r~ + q . dr``, at most
    ``|dq| |r~| + |q| |dr|`` (Cauchy-Schwarz on the measured rounding errors); float32 accumulation of
    the exact bfloat16 products adds at most ``2 d 2**-24 |q~| |r~|`` (twice the textbook bound for
    d terms). float32 norms err by at most d * 2**-24 relative: the factor 1 + 1e-3 covers d <= 16,000.
    """
    accumulation = 2 * d * 2.0 ** -24 * (q_norm + q_err)
    return ((q_err + accumulation) * r_norm + q_norm * r_err) * (1 + 1e-3) + 1e-30


def candidate_products(q, R, cand):
    """float32 ``q[i] . R[cand[i, j]]`` for every (i, j), without gathering the rows: a sampled matrix
    product over the sparsity pattern ``cand`` (sorted within each row)."""
    import warnings

    import torch

    n, c = cand.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(torch.arange(0, n * c + 1, c), cand.reshape(-1), q.new_zeros(n * c),
                                          size=(n, len(R)), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, q, R.T, beta=0.0).values().view(n, c)
