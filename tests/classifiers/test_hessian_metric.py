"""The Hessian as L-BFGS's starting metric on small logistic problems, and the line search's acceptance where the
objective's change is below its rounding: the Hessian is the loss's (checked against its formula written out),
a solve with it reaches the same optimum in fewer iterations, and a rounded objective does not stall a descent."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

import transferlab.classifiers._batched_lbfgs as B
from transferlab.classifiers._batched_lbfgs import MaskedProblem, Problem, RowSource
from transferlab.classifiers.fast_logreg import TorchLogisticRegression


def _reference_hessian(X, y_w, A, b, C, mu, K):
    """The objective's Hessian in x = (A flattened class-major, b), written out: C sum_n w_n (diag(p) - p p^T) (x)
    [x_n - mu, 1][x_n - mu, 1]^T, plus the identity on A (the penalty); numpy, float64."""
    Xc = X - mu
    r = Xc.shape[1]
    Z = Xc @ A.T + b
    p = np.exp(Z - Z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    Xa = np.hstack([Xc, np.ones((len(X), 1))])
    H = np.zeros((K * (r + 1), K * (r + 1)))
    for n in range(len(X)):
        H += y_w[n] * np.kron(np.diag(p[n]) - np.outer(p[n], p[n]), np.outer(Xa[n], Xa[n]))
    H *= C
    # (k, feature-or-intercept) order -> x's order: every class's weights, then the K intercepts
    order = [k * (r + 1) + i for k in range(K) for i in range(r)] + [k * (r + 1) + r for k in range(K)]
    H = H[np.ix_(order, order)]
    H[np.arange(K * r), np.arange(K * r)] += 1.0
    return H


def _off_the_flat_direction(H, K, P):
    """H with the intercepts' class-mean direction (along which the loss is flat) projected out."""
    v = np.zeros(P)
    v[P - K:] = 1 / np.sqrt(K)
    Q = np.eye(P) - np.outer(v, v)
    return Q @ H @ Q


@pytest.mark.parametrize("centred", [True, False])
def test_the_hessian_is_the_logistic_loss_hessian_of_each_problem_on_its_rows(centred):
    rng = np.random.default_rng(0)
    n, d, K = 70, 4, 3
    X = rng.normal(size=(n, d)).astype(np.float32).astype(np.float64)  # the features as a source holds them
    y = rng.integers(0, K, n)
    mu = np.zeros(d) if centred else X.mean(0)
    masks = rng.random((2, n)) < 0.7
    src = RowSource(X, "cpu", 1 << 30, torch.float64)
    prob = MaskedProblem(src, y, K, torch.as_tensor(mu), None, torch.ones(d, dtype=torch.float64),
                         torch.as_tensor(masks, dtype=torch.float64))
    prob.group = torch.tensor([1, 0, 1])
    x = torch.as_tensor(rng.normal(size=(3, prob.P)))
    C = torch.tensor([0.5, 4.0, 30.0], dtype=torch.float64)
    L = prob.hessian(x, C)
    assert L is not None
    for j, subset in enumerate([1, 0, 1]):
        A, b = x[j, :K * d].view(K, d).numpy(), x[j, K * d:].numpy()
        ref = _reference_hessian(X, masks[subset].astype(float), A, b, float(C[j]), mu, K)
        got = (L[j] @ L[j].T).numpy()
        np.testing.assert_allclose(_off_the_flat_direction(got, K, prob.P), _off_the_flat_direction(ref, K, prob.P),
                                   rtol=1e-9, atol=1e-9 * np.abs(ref).max())


@pytest.mark.parametrize("keep_floats", [1 << 24, 200])  # the rows' feature products kept; or, 5 rows at a time
def test_the_hessian_of_many_rows_is_estimated_on_every_kth_row_scaled_to_all(keep_floats, monkeypatch):
    rng = np.random.default_rng(1)
    n, d, K = 90, 3, 3
    X, y = rng.normal(size=(n, d)).astype(np.float32).astype(np.float64), rng.integers(0, K, n)
    monkeypatch.setattr(B, "HESSIAN_ROWS", 30)  # every third row
    monkeypatch.setattr(B, "HESSIAN_KEEP_FLOATS", keep_floats)
    prob = Problem(RowSource(X, "cpu", 1 << 30, torch.float64), y, K, torch.zeros(d, dtype=torch.float64), None,
                   torch.ones(d, dtype=torch.float64))
    x = torch.as_tensor(rng.normal(size=(2, prob.P)))
    A, b = x[0, :K * d].view(K, d).numpy(), x[0, K * d:].numpy()
    ref = _reference_hessian(X[::3], np.full(30, n / 30), A, b, 2.0, np.zeros(d), K)
    for _ in range(2):  # the second call reads the feature products the first kept (where it kept them)
        L = prob.hessian(x, torch.tensor([2.0, 5.0], dtype=torch.float64))
        got = (L[0] @ L[0].T).numpy()
        np.testing.assert_allclose(_off_the_flat_direction(got, K, prob.P), _off_the_flat_direction(ref, K, prob.P),
                                   rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    assert (getattr(prob, "_pairs", None) is not None) == (keep_floats > 200)


def _narrow_digits():
    """Digits projected onto 12 random directions: a narrow layer's shape (10 classes, P = 130), ill-conditioned at
    large C, where L-BFGS on the Gram preconditioner alone takes hundreds of iterations."""
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1.0)
    X = X @ np.random.default_rng(0).normal(size=(64, 12))
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32), y


@pytest.mark.parametrize("C", [1e2, 1e4])
def test_a_small_problem_solved_with_its_hessian_reaches_the_same_optimum_in_fewer_iterations(C, monkeypatch):
    X, y = _narrow_digits()
    with_metric = TorchLogisticRegression(C=C, tol=1e-6, max_iter=3000).fit(X, y)
    monkeypatch.setattr(B, "METRIC_MAX_P", 0)
    without = TorchLogisticRegression(C=C, tol=1e-6, max_iter=3000).fit(X, y)
    assert int(with_metric.n_iter_[0]) < int(without.n_iter_[0]) / 2
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=100000).fit(X.astype(np.float64), y)

    def objective(m):  # scikit-learn's: C times the summed log-loss plus half the squared weights
        Z = X.astype(np.float64) @ m.coef_.T + m.intercept_
        Z -= Z.max(1, keepdims=True)
        log_p = Z - np.log(np.exp(Z).sum(1, keepdims=True))
        return -C * log_p[np.arange(len(y)), y].sum() + 0.5 * (m.coef_ ** 2).sum()

    assert objective(with_metric) == pytest.approx(objective(ref), rel=1e-5)
    assert objective(without) == pytest.approx(objective(ref), rel=1e-5)
    assert np.mean(with_metric.predict(X) == ref.predict(X)) > 0.995


class _RoundedAway:
    """A quadratic whose reported objective is its value at the start everywhere else plus ``q`` (below the line
    search's rounding): a step never shows a decrease, as at the end of a float32 descent at large C. The gradient
    is exact; evaluations are counted."""

    supports_hessian = False

    def __init__(self, a, x0, F, q):
        self.a, self.x0, self.F, self.q, self.P, self.calls = a, x0, F, q, a.numel(), 0
        self.source = SimpleNamespace(low_center=None, streamed=False)

    def row_count(self):
        return 1.0

    def evaluate(self, x, C, ids=None):
        self.calls += 1
        moved = (x != self.x0).any(1).double()
        return self.F + self.q * moved, self.a * x, torch.ones(x.shape[0], dtype=x.dtype)

    def precondition(self, q, C, h):
        return q

    def grad_max(self, grad):
        return grad.abs().amax(1)


@pytest.mark.parametrize("start, ends_at_once", [(1e-8, True), (1.0, False)])
def test_a_search_that_cannot_show_a_decrease_ends_after_one_step_not_max_ls(start, ends_at_once, monkeypatch):
    a = torch.logspace(0, 2, 20, dtype=torch.float64)
    x0 = torch.full((1, 20), start, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)

    def evaluations():
        problem = _RoundedAway(a, x0, 1e3, 1e-10)  # 1e-10 of an objective of 1e3: below float64's rule (1e-12 of it)
        _, n_iter, converged = B._lbfgs(problem, x0.clone(), one, 1e-15, 50, 10)
        assert int(n_iter[0]) == 1 and not bool(converged[0])  # no step was accepted: the descent ends there
        return problem.calls

    ruled = evaluations()
    monkeypatch.setattr(B, "F64_ROUNDING", -1.0)  # no rounding known: the search halves to max_ls
    assert evaluations() == 1 + 20
    # near the optimum the slope predicts a decrease below the rounding too: one evaluation of the step, then the end;
    # far from it (a predicted decrease far above the rounding) a shorter step might show one: the search goes on
    assert ruled == (1 + 1 if ends_at_once else 1 + 20)
