"""Linear CKA: against a direct numpy computation, its known properties, and off the cache in chunks."""
import h5py
import numpy as np
import pytest

from transferlab.classifiers.similarity import cka_matrix, linear_cka
from transferlab.features.cache import list_layers, load_split
from transferlab.util import UserInputError


def _cka_by_hsic(X, Y):
    """Kornblith et al.'s definition in sample space: HSIC of the centred Gram matrices, normalised."""
    n = X.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(A, B):
        return np.trace(A @ H @ B @ H)

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


@pytest.fixture
def reps():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 12))
    Y = np.tanh(X @ rng.normal(size=(12, 30))) + 0.3 * rng.normal(size=(80, 30))
    return X, Y


def test_linear_cka_matches_the_sample_space_definition(reps):
    X, Y = reps
    assert linear_cka(X, Y) == pytest.approx(_cka_by_hsic(X, Y), rel=1e-10)
    Z = np.random.default_rng(1).normal(size=(80, 200))  # more dims than rows: the other Gram side
    assert linear_cka(X, Z) == pytest.approx(_cka_by_hsic(X, Z), rel=1e-10)
    assert 0.0 < linear_cka(X, Y) < 1.0


def test_linear_cka_is_one_on_identical_inputs_and_symmetric(reps):
    X, Y = reps
    assert linear_cka(X, X) == pytest.approx(1.0, rel=1e-12)
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X), rel=1e-12)


def test_linear_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(reps):
    X, Y = reps
    Q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(30, 30)))
    base = linear_cka(X, Y)
    assert linear_cka(X, Y @ Q) == pytest.approx(base, rel=1e-10)
    assert linear_cka(X * 7.5, Y * 0.01 + 3.0) == pytest.approx(base, rel=1e-10)


def test_linear_cka_is_not_invariant_to_a_non_isotropic_scaling(reps):
    X, Y = reps
    D = np.geomspace(0.01, 100, Y.shape[1])
    assert abs(linear_cka(X, Y * D) - linear_cka(X, Y)) > 0.05


def test_a_constant_representation_has_no_cka():
    X = np.random.default_rng(0).normal(size=(20, 3))
    assert np.isnan(linear_cka(X, np.ones((20, 4))))


def _loaded(path, layers, split="train"):
    return {name: load_split(path, split, name)[0] for name in layers}


def test_cka_matrix_off_the_cache_equals_cka_on_the_loaded_layers(cache_with_val):
    out = cka_matrix(cache_with_val, max_rows=10_000)
    layers = list_layers(cache_with_val)
    assert out["layers"] == layers and out["n_rows"] == 500 and out["split"] == "train"
    X = _loaded(cache_with_val, layers)
    M = np.array(out["matrix"])
    for i, a in enumerate(layers):
        for j, b in enumerate(layers):
            assert M[i, j] == pytest.approx(_cka_by_hsic(X[a] - X[a].mean(0), X[b] - X[b].mean(0)), rel=1e-8)
    np.testing.assert_array_equal(M, M.T)


def test_cka_matrix_reads_chunks_of_a_capped_subsample(cache_with_val, monkeypatch):
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        value = real(self, key)
        if "features" in self.name:
            reads.append(np.shape(value)[0])
        return value

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    out = cka_matrix(cache_with_val, max_rows=120, seed=3, chunk_rows=37)
    monkeypatch.undo()
    assert out["n_rows"] == 120 and max(reads) <= 37
    rows = np.sort(np.random.default_rng(3).choice(500, 120, replace=False))  # the seeded subsample, documented
    X = _loaded(cache_with_val, out["layers"])
    a, b = out["layers"][0], out["layers"][2]
    assert out["matrix"][0][2] == pytest.approx(linear_cka(X[a][rows], X[b][rows]), rel=1e-10)
    assert cka_matrix(cache_with_val, max_rows=120, seed=3)["matrix"] == out["matrix"]  # chunking changes nothing


def test_bad_cap_and_unknown_layer_are_user_errors(cache_with_val):
    with pytest.raises(UserInputError, match="max_rows"):
        cka_matrix(cache_with_val, max_rows=1)
    with pytest.raises(UserInputError, match="valid layers"):
        cka_matrix(cache_with_val, layers=["stem", "nope"])
