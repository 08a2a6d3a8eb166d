import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from transferlab.classifiers import fast_knn
from transferlab.classifiers.fast_knn import TorchKNeighborsClassifier
from transferlab.classifiers.heads import default_grid, make_head
from transferlab.classifiers.holdout import stratified_holdout
from transferlab.classifiers.protocol import grid_scores, select_and_fit


@pytest.fixture
def noisy(digits_arrays):
    """Digits with heavy noise (k matters), one exact duplicate of a training row among the queries
    (a zero distance) and one all-zero query (distance 1 from everything)."""
    X, y, Xt, yt = digits_arrays
    rng = np.random.default_rng(0)
    X = (X + rng.normal(0, 3.0, X.shape)).astype(np.float32)
    Xt = (Xt + rng.normal(0, 3.0, Xt.shape)).astype(np.float32)
    Xt[0], yt[0] = X[7], y[7]
    Xt[1] = 0.0
    return X, y, Xt, yt


def _sklearn(k, weights="distance"):
    return KNeighborsClassifier(k, weights=weights, metric="cosine", algorithm="brute")


@pytest.mark.parametrize("block", [fast_knn.BLOCK_ELEMENTS, 1000])  # one block; many blocks of 1 query row
def test_search_equals_scikit_learns_cosine_search(noisy, monkeypatch, block):
    monkeypatch.setattr(fast_knn, "BLOCK_ELEMENTS", block)
    X, y, Xt, _ = noisy
    ours = TorchKNeighborsClassifier(9, weights="distance", metric="cosine", algorithm="brute").fit(X, y)
    ref = _sklearn(9).fit(X, y)
    d, i = ours.kneighbors(Xt)
    rd, ri = ref.kneighbors(Xt)
    assert d.dtype == np.float32 and i.dtype == np.int64
    np.testing.assert_allclose(d, rd, atol=2e-6)
    rows = np.arange(len(Xt)) != 1  # the zero row is at distance 1 from every row: any order is right
    np.testing.assert_array_equal(i[rows], ri[rows])
    assert i[0, 0] == 7 and d[0, 0] < 1e-6  # the duplicate
    np.testing.assert_allclose(d[1], 1.0)  # the zero row
    np.testing.assert_array_equal(ours.predict(Xt)[rows], ref.predict(Xt)[rows])
    np.testing.assert_allclose(ours.predict_proba(Xt)[rows], ref.predict_proba(Xt)[rows], atol=1e-5)


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_every_k_of_the_grid_scores_as_a_scikit_learn_fit_of_that_k(noisy, weights):
    X, y, Xt, yt = noisy
    grid = [1, 2, 3, 5, 10, 20, 50, 400]  # 400 > the 300 training rows: capped, as adapt_to_data caps a fit
    head = TorchKNeighborsClassifier(weights=weights, metric="cosine", algorithm="brute")
    Xt, yt = Xt[2:], yt[2:]  # not the zero row, whose neighbours all tie
    scores = head.score_grid(grid, X[:300], y[:300], Xt, yt)
    expected = [_sklearn(min(k, 300), weights).fit(X[:300], y[:300]).score(Xt, yt) for k in grid]
    assert scores == expected
    assert len(set(expected)) > 3  # k matters on these rows


def test_the_selection_scores_each_k_as_scikit_learn_on_the_same_holdout(noisy):
    """The head's whole selection: the default k grid on the protocol's holdout, then the refit."""
    X, y, Xt, yt = noisy
    Xt, yt = Xt[2:], yt[2:]
    tr, va, _ = stratified_holdout(y, 0.2, seed=0)
    grid = default_grid("knn", full=True)["n_neighbors"]
    expected = [make_pipeline(Normalizer(), _sklearn(k)).fit(X[tr], y[tr]).score(X[va], y[va]) for k in grid]
    points, scores = grid_scores(X[tr], y[tr], X[va], y[va], "knn", grid=grid)
    assert [p["n_neighbors"] for p in points] == grid and list(scores) == expected
    result = select_and_fit(X, y, None, None, Xt, yt, "knn", full_grid=True)
    best = grid[int(np.argmax(expected))]
    assert result.params == {"n_neighbors": best}
    assert [s["val_accuracy"] for s in result.val_scores] == expected
    assert result.test_accuracy == make_pipeline(Normalizer(), _sklearn(best)).fit(X, y).score(Xt, yt)


def test_other_metrics_and_training_row_queries_are_scikit_learns(noisy):
    X, y, Xt, _ = noisy
    ours = make_head("knn", metric="euclidean", n_neighbors=4).fit(X, y)
    ref = make_pipeline(Normalizer(), KNeighborsClassifier(4, weights="distance", algorithm="brute")).fit(X, y)
    np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))
    head = TorchKNeighborsClassifier(3, weights="distance", metric="cosine", algorithm="brute").fit(X, y)
    np.testing.assert_array_equal(head.kneighbors()[1], _sklearn(3).fit(X, y).kneighbors()[1])  # X=None: leave-one-out
    with pytest.raises(ValueError, match="n_neighbors"):
        head.kneighbors(Xt, n_neighbors=len(X) + 1)


def _bands(d=64, queries=8, band=150, others=300, spacing=2e-5, seed=0):
    """Adversarial rows for the bfloat16 pass: around each query, ``band`` training rows whose cosine
    similarities to it are 0.9, 0.9 + spacing, ... (a band narrower than one bfloat16 step, 0.004, so
    that pass cannot order them), plus random rows; every similarity is distinct in float32."""
    rng = np.random.default_rng(seed)
    Q = rng.normal(size=(queries, d))
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    rows = [rng.normal(size=(others, d))]
    for q in Q:
        v = rng.normal(size=(band, d))
        v -= np.outer(v @ q, q)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        cos = 0.9 + spacing * rng.permutation(band)
        rows.append(cos[:, None] * q + np.sqrt(1 - cos ** 2)[:, None] * v)
    F = np.concatenate(rows)
    order = rng.permutation(len(F))
    return (F[order] * rng.uniform(0.5, 2.0, (len(F), 1))).astype(np.float32), Q.astype(np.float32), rng


def _assert_same_neighbours(F, Q, k, ties=False):
    """Our search against scikit-learn's brute cosine search: distances, neighbours (the rows
    themselves where ``ties``: any of equal rows is right) and distance-weighted votes."""
    y = np.unique(F, axis=0, return_inverse=True)[1].ravel() % 3  # equal rows, equal labels
    ours = TorchKNeighborsClassifier(k, weights="distance", metric="cosine", algorithm="brute").fit(F, y)
    ref = _sklearn(k).fit(F, y)
    (d, i), (rd, ri) = ours.kneighbors(Q), ref.kneighbors(Q)
    np.testing.assert_allclose(d, rd, atol=2e-6)
    if ties:
        np.testing.assert_array_equal(F[i], F[ri])
    else:
        np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(ours.predict(Q), ref.predict(Q))


@pytest.mark.parametrize("block", [fast_knn.BLOCK_ELEMENTS, 2000])  # one block; a block per query (m grows)
@pytest.mark.parametrize("k", [1, 10, 100, 149])
def test_near_ties_below_bfloat16_resolution_are_ordered_exactly(monkeypatch, block, k):
    """The k-th neighbour sits in a band of rows the bfloat16 pass cannot tell apart: the check must
    send those queries to the float32 search (with the check skipped, most answers here are wrong)."""
    monkeypatch.setattr(fast_knn, "BLOCK_ELEMENTS", block)
    F, Q, _ = _bands()
    _assert_same_neighbours(F, Q, k)
    _assert_same_neighbours(F, np.concatenate([Q, -Q, F[:20]]), k)  # also far queries, and training rows


def test_duplicate_and_zero_rows(monkeypatch):
    """40 copies of a row (exact ties at the k-th place), zero training rows (distance 1 from every
    query) and zero queries (every row at distance 1)."""
    F, Q, rng = _bands(queries=4, band=60)
    F[:40] = F[40]
    F[50:60] = 0.0
    Q = np.concatenate([Q, F[40:41] * 3, F[40:41] + rng.normal(0, 1e-3, (3, F.shape[1])).astype(np.float32)])
    for k in (5, 45, 60):
        _assert_same_neighbours(F, Q, k, ties=True)
    zero = np.zeros((2, F.shape[1]), np.float32)
    ours = TorchKNeighborsClassifier(7, metric="cosine", algorithm="brute").fit(F, np.arange(len(F)) % 3)
    np.testing.assert_allclose(ours.kneighbors(zero)[0], 1.0)


@pytest.mark.parametrize("k", [1, 2, 43, 44, 59, 60])  # k + 16 below, at and past the 60 rows
def test_every_k_up_to_the_number_of_rows(k):
    F, Q, _ = _bands(queries=3, band=20, others=0)
    _assert_same_neighbours(F, np.concatenate([Q, F[::7]]), k)


def test_the_grid_on_near_ties_scores_as_scikit_learn():
    F, Q, rng = _bands(queries=20, band=100)
    y = rng.integers(0, 4, len(F))
    queries = np.concatenate([Q, F[:200] + rng.normal(0, 0.05, (200, F.shape[1])).astype(np.float32)])
    yq = rng.integers(0, 4, len(queries))
    grid = [1, 3, 5, 10, 20, 50, 99]
    scores = TorchKNeighborsClassifier(weights="distance", metric="cosine", algorithm="brute").score_grid(
        grid, F, y, queries, yq)
    assert scores == [_sklearn(k).fit(F, y).score(queries, yq) for k in grid]


@pytest.mark.parametrize("kind", ["random", "aligned", "spiky", "bfloat16 inputs"])
def test_the_bound_holds_for_torchs_bfloat16_product(kind):
    """What the check assumes of torch's bfloat16 product: its error against the exact similarity of
    the float32 rows is within ``excluded_bound`` plus one bfloat16 step of the result. Rows already
    in bfloat16 leave only the result's rounding, which the bound alone does not cover."""
    import torch

    rng = np.random.default_rng(1)
    d = 1280
    R = rng.normal(size=(3000, d))
    if kind == "aligned":  # near-duplicates of one direction: products close to 1, the largest output steps
        R = R[0] + 0.05 * R
    elif kind == "spiky":  # a few large components: rounding errors concentrated
        R = R * (rng.random(R.shape) < 0.01) * 100 + R * 0.01
    if kind == "bfloat16 inputs":  # 8-bit integers / 2**12, one direction: exact in bfloat16, products large
        R = torch.from_numpy((rng.integers(-100, 100, d) + rng.integers(-27, 28, (3000, d))) / 4096.0).float()
        Q, mu = R[:200].clone(), torch.zeros(d)
    else:
        R = torch.from_numpy(R / np.linalg.norm(R, axis=1, keepdims=True)).float()
        Q = R[:200] + 0.01 * torch.from_numpy(rng.normal(size=(200, d))).float()
        Q, mu = Q / Q.norm(dim=1, keepdim=True), R.mean(dim=0)
    Rb, r_norm, r_err = fast_knn.bf16_rows(R, mu)
    r_norm, r_err = (r_norm + r_err).max(), r_err.max()
    qb, q_norm, q_err = fast_knn.bf16_rows(Q)
    with torch.inference_mode():
        approx = (qb @ Rb.T).double()
    exact = Q.double() @ (R - mu).double().T  # the similarity the ceiling is about, less q . mu
    bound = fast_knn.excluded_bound(q_norm, q_err, r_norm, r_err, d).double()[:, None]
    err = (exact - approx).abs()
    assert (err <= bound + fast_knn.OUTPUT_ROUNDING * approx.abs()).all()
    if kind == "bfloat16 inputs":
        assert r_err == 0 and (q_err == 0).all() and (err > bound).double().mean() > 0.5
    else:
        assert err.max() > 0.05 * bound.min()  # the bound is about the right size, not vacuous
