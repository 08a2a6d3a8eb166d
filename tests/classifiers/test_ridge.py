import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import RidgeClassifier

from transferlab.classifiers import select_and_fit
from transferlab.classifiers.ridge import RidgeProbe
from transferlab.util import UserInputError


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


@pytest.mark.parametrize("n, classes", [(600, 10), (600, 2), (40, 10)])  # primal, binary, fewer rows than dims
def test_solution_equals_sklearn_ridge_classifier(digits, n, classes):
    X, y = digits
    keep = np.flatnonzero(y < classes)[:n]
    X, y = X[keep], y[keep]
    for alpha in (0.01, 1.0, 100.0):
        ours = RidgeProbe(alpha=alpha).fit(X, y)
        ref = RidgeClassifier(alpha=alpha, solver="svd").fit(X.astype(np.float64), y)
        # (1, D) for two classes
        np.testing.assert_allclose(ours.coef_, ref.coef_.reshape(ours.coef_.shape), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-4, atol=1e-6)
        assert (ours.predict(X) == ref.predict(X)).all()


def test_score_grid_equals_one_sklearn_fit_per_alpha(digits):
    X, y = digits
    alphas = [1e-3, 1.0, 30.0, 1e4]
    got = RidgeProbe().score_grid(alphas, X[:800], y[:800], X[800:], y[800:])
    want = [RidgeClassifier(alpha=a).fit(X[:800], y[:800]).score(X[800:], y[800:]) for a in alphas]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert len(set(got)) > 1  # the grid matters on these rows


def test_ridge_head_selects_on_validation_like_a_plain_loop(digits):
    from transferlab.classifiers.preprocessing import ShrunkStandardScaler

    X, y = digits
    res = select_and_fit(X[:1000], y[:1000], X[1000:1400], y[1000:1400], X[1400:], y[1400:], "ridge")
    scaler = ShrunkStandardScaler().fit(X[:1000])  # the head's standardize step (checked in test_preprocessing)
    grid = [v["params"]["alpha"] for v in res.val_scores]
    loop = [RidgeClassifier(alpha=a).fit(scaler.transform(X[:1000]), y[:1000])
            .score(scaler.transform(X[1000:1400]), y[1000:1400]) for a in grid]
    np.testing.assert_allclose([v["val_accuracy"] for v in res.val_scores], loop, atol=1e-12)
    assert res.params["alpha"] == grid[int(np.argmax(loop))]
    assert res.test_accuracy > 0.85


def test_bad_alpha_is_a_user_error(digits):
    X, y = digits
    with pytest.raises(UserInputError, match="alphas must be positive"):
        RidgeProbe(alpha=-1).fit(X[:100], y[:100])
