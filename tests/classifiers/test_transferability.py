"""LogME and kNN: against direct computations and known properties."""
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from transferlab.classifiers.transferability import Spectrum, fixed_point, knn_accuracy, logme, logme_evidence


def test_logme_evidence_is_the_gaussian_marginal_likelihood():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(12, 4))
    y = rng.normal(size=12)
    for alpha, beta in ((1.0, 1.0), (0.3, 2.5), (4.0, 0.7)):
        cov = np.eye(12) / beta + F @ F.T / alpha
        direct = multivariate_normal(mean=np.zeros(12), cov=cov).logpdf(y) / 12
        assert logme_evidence(F, y, alpha, beta) == pytest.approx(direct, rel=1e-10)


def test_logme_evidence_with_more_dimensions_than_rows():
    rng = np.random.default_rng(1)
    F, y = rng.normal(size=(5, 9)), rng.normal(size=5)
    cov = np.eye(5) / 1.7 + F @ F.T / 0.4
    assert logme_evidence(F, y, 0.4, 1.7) == pytest.approx(multivariate_normal(np.zeros(5), cov).logpdf(y) / 5)


def test_thefixed_point_maximises_the_evidence():
    rng = np.random.default_rng(2)
    F = rng.normal(size=(60, 6))
    y = F @ rng.normal(size=6) + 0.5 * rng.normal(size=60)
    alpha, beta = fixed_point(Spectrum(F), y, max_iter=200, tol=1e-12)
    best = logme_evidence(F, y, alpha, beta)
    for fa, fb in ((1.5, 1), (1 / 1.5, 1), (1, 1.5), (1, 1 / 1.5)):
        assert logme_evidence(F, y, alpha * fa, beta * fb) < best


def test_a_hand_checked_one_dimensional_case():
    # F = [[1], [-1]], y = [1, -1]: sigma = 2, F^T y = 2. At alpha = beta = 1: m = 2/3, residual
    # ||F m - y||^2 = 2 (1/3)^2 = 2/9, evidence = (0 + 0 - log 2pi - 1/9 - 2/9 - log 3 / 2 ... ) / 2
    F, y = np.array([[1.0], [-1.0]]), np.array([1.0, -1.0])
    expected = (-np.log(2 * np.pi) - 0.5 * (2 / 9) - 0.5 * (4 / 9) - 0.5 * np.log(3)) / 2
    assert logme_evidence(F, y, 1.0, 1.0) == pytest.approx(expected)


def test_logme_ranks_features_that_separate_the_classes_higher():
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=X.shape)
    assert logme(X / 16, y) > logme(noise, y)
    assert logme(X / 16 + 0.5 * noise, y) < logme(X / 16, y)


def test_knn_accuracy_equals_scikit_learns_cosine_knn():
    X, y = load_digits(return_X_y=True)
    for k in (1, 5, 10):
        ref = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(X[:1000], y[:1000])
        expected = np.mean(ref.predict(X[1000:]) == y[1000:])
        assert knn_accuracy(X[:1000], y[:1000], X[1000:], y[1000:], k=k) == pytest.approx(expected, abs=0.003)


def test_logme_equals_its_definition_by_the_features_own_svd():
    """The Gram's eigendecomposition against an independent SVD of the features (the form of the paper's
    equations), with fewer and with more dimensions than rows, at the fixed point each reaches."""
    rng = np.random.default_rng(3)
    for n, d in ((80, 12), (15, 40)):
        F = rng.normal(size=(n, d)) * np.linspace(0.1, 3, d)
        y = (F[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(float)
        U, s, _ = np.linalg.svd(F, full_matrices=False)
        for alpha, beta in ((1.0, 1.0), (0.05, 8.0)):
            m_v = beta * s / (alpha + beta * s**2) * (U.T @ y)
            sigma = np.zeros(d)
            sigma[: s.size] = s**2
            res2 = np.sum((U @ (s * m_v) - y) ** 2)
            direct = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi) - beta / 2 * res2
                      - alpha / 2 * (m_v @ m_v) - 0.5 * np.sum(np.log(alpha + beta * sigma))) / n
            assert logme_evidence(F, y, alpha, beta) == pytest.approx(direct, rel=1e-9)


def test_knn_accuracy_breaks_a_tied_vote_toward_the_nearer_neighbour():
    X = np.array([[1.0, 0.0], [0.0, 1.0]])  # one row per class: with k = 2 every vote is a tie
    queries = np.array([[0.9, 0.2], [0.3, 0.9]])  # nearer the first row, nearer the second
    assert knn_accuracy(X, [0, 1], queries, [0, 1], k=2) == 1.0
    assert knn_accuracy(X, [0, 1], queries, [1, 0], k=2) == 0.0
