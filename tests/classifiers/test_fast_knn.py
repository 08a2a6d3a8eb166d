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
