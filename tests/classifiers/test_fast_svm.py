import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from transferlab.classifiers import select_and_fit
from transferlab.classifiers.fast_svm import TorchLinearSVC, fit_svm_path


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return normalize(X).astype(np.float32), y


def _objective(X, y, classes, C, W, b):
    """LinearSVC's primal (squared hinge, one-vs-rest) with an unpenalised intercept, computed here."""
    T = np.where(np.arange(classes)[None] == y[:, None], 1.0, -1.0)
    T = T[:, 1:] if classes == 2 else T
    margins = np.clip(1 - T * (X.astype(np.float64) @ np.atleast_2d(W).T + b), 0, None)
    return 0.5 * (np.atleast_2d(W) ** 2).sum() + C * (margins ** 2).sum()


@pytest.mark.parametrize("classes", [10, 2])
def test_path_reaches_liblinear_objective_and_predictions(digits, classes):
    X, y = digits
    keep = np.flatnonzero(y < classes)
    X, y = X[keep][:900], y[keep][:900]
    Cs = [0.01, 0.1, 1.0, 10.0]
    path = fit_svm_path(X, y, Cs)
    for i, C in enumerate(Cs):
        # intercept_scaling 100: liblinear's penalty on the intercept becomes negligible, as in ours
        ref = LinearSVC(C=C, tol=1e-6, max_iter=50000, intercept_scaling=100).fit(X, y)
        ours = _objective(X, y, classes, C, path.coefs[i], path.intercepts[i])
        theirs = _objective(X, y, classes, C, ref.coef_, ref.intercept_)
        assert ours <= theirs * (1 + 1e-3), (C, ours, theirs)
        agree = np.mean(path.predict(X)[i] == ref.predict(X))
        assert agree >= 0.99, (C, agree)


def test_score_grid_equals_one_fit_per_c(digits):
    X, y = digits
    Cs = [0.01, 1.0, 100.0]
    grid = TorchLinearSVC().score_grid(Cs, X[:1000], y[:1000], X[1000:], y[1000:])
    each = [TorchLinearSVC(C=C).fit(X[:1000], y[:1000]).score(X[1000:], y[1000:]) for C in Cs]
    np.testing.assert_allclose(grid, each, atol=2e-3)  # warm starts may stop at a slightly different point
    assert grid[0] < grid[1]  # C matters on these rows


def test_svm_head_uses_the_batched_grid_and_the_sklearn_solver_stays_available(digits):
    X, y = digits
    fast = select_and_fit(X[:1000], y[:1000], X[1000:1400], y[1000:1400], X[1400:], y[1400:], "svm",
                          preprocessing="none")
    slow = select_and_fit(X[:1000], y[:1000], X[1000:1400], y[1000:1400], X[1400:], y[1400:], "svm",
                          preprocessing="none", solver="sklearn")
    assert fast.solver == "torch" and slow.solver == "sklearn"
    assert isinstance(fast.estimator.named_steps["head"], TorchLinearSVC)
    assert isinstance(slow.estimator.named_steps["head"], LinearSVC)
    assert abs(fast.test_accuracy - slow.test_accuracy) <= 0.01
    assert not hasattr(fast.estimator, "predict_proba")  # an SVM gives scores, not probabilities


@pytest.mark.parametrize("classes", [10, 2])
def test_a_refit_started_from_the_grid_reaches_the_same_objective(digits, classes):
    """``refit_init`` after ``score_grid``: the solution at C on the training rows and the path's
    preconditioner. On the same rows the fit starts at its optimum (0 iterations: the coefficients
    map back exactly); on train+val it ends at the cold fit's objective."""
    X, y = digits
    keep = np.flatnonzero(y < classes)
    X, y = X[keep], y[keep]
    head = TorchLinearSVC(max_iter=1000)  # the default tol, which float32 reaches on these rows
    head.score_grid([0.1, 1.0], X[:240], y[:240], X[240:320], y[240:320])
    start = head.refit_init(1.0)
    assert set(start) == {"coef_init", "intercept_init", "preconditioner_init"}
    assert head.refit_init(3.0).keys() == {"preconditioner_init"}  # no solution at a C the grid lacks
    same = TorchLinearSVC(C=1.0, max_iter=1000).fit(X[:240], y[:240], **start)
    assert same.n_iter_[0] == 0
    np.testing.assert_allclose(same.coef_, start["coef_init"], rtol=1e-4, atol=1e-5)
    warm = TorchLinearSVC(C=1.0, tol=1e-6, max_iter=1000).fit(X[:320], y[:320], **start)
    cold = TorchLinearSVC(C=1.0, tol=1e-6, max_iter=1000).fit(X[:320], y[:320])
    f_warm = _objective(X[:320], y[:320], classes, 1.0, warm.coef_, warm.intercept_)
    f_cold = _objective(X[:320], y[:320], classes, 1.0, cold.coef_, cold.intercept_)
    assert f_warm == pytest.approx(f_cold, rel=1e-5)
