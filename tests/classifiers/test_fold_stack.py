"""Every fold of a k-fold fitted in one stack: the masked problem is the subset's problem, and the stacked
selection scores what one fit per fold scores."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from transferlab.classifiers._batched_lbfgs import MaskedProblem, Problem, RowSource
from transferlab.classifiers.compare import repeated_folds
from transferlab.classifiers.fast_logreg import TorchLogisticRegression


def _digits(n=400, labels=tuple(range(10)), noise=0.0):
    X, y = load_digits(return_X_y=True)
    keep = np.flatnonzero(np.isin(y, labels))[:n]
    X = X[keep].astype(np.float32)
    X = (X - X.mean(0)) / (X.std(0) + 1.0)
    return X + np.random.default_rng(1).normal(size=X.shape).astype(np.float32) * noise, y[keep]


HARD_PAIR = dict(n=300, labels=(3, 8), noise=2.0)  # two classes, noisy: the folds' paths stop at different C


def test_a_masked_problem_has_the_loss_and_gradient_of_its_rows_alone():
    X, y = _digits(120, labels=(0, 1, 2))
    rng = np.random.default_rng(0)
    masks = rng.random((2, len(y))) < 0.7
    src = RowSource(X, "cpu", 1 << 30, torch.float64)
    mu = torch.as_tensor(X.mean(0), dtype=torch.float64)
    lam = torch.ones(X.shape[1], dtype=torch.float64)
    stacked = MaskedProblem(src, y, 3, mu, None, lam, torch.as_tensor(masks, dtype=torch.float64))
    stacked.group = torch.tensor([1, 0, 1])
    x = torch.as_tensor(rng.normal(size=(3, stacked.P)) * 0.1)
    C = torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)
    f, grad, h = stacked.evaluate(x, C)
    for j, subset in enumerate([1, 0, 1]):  # independent: the plain problem on that subset's rows only
        rows = masks[subset]
        alone = Problem(RowSource(X[rows], "cpu", 1 << 30, torch.float64), y[rows], 3, mu, None, lam)
        fa, ga, ha = alone.evaluate(x[j:j + 1], C[j:j + 1])
        assert float(f[j]) == pytest.approx(float(fa[0]), rel=1e-10)
        assert torch.allclose(grad[j], ga[0], rtol=1e-9, atol=1e-12)
        # the curvature is per row of all the rows: the subset's share of the preconditioner's Gram
        assert float(h[j]) == pytest.approx(float(ha[0]) * rows.sum() / len(y), rel=1e-9)
    # a step of the line search evaluates some problems of the stack: each keeps its own rows
    f2, _, _ = stacked.evaluate(x[[2]], C[[2]], torch.tensor([2]))
    assert float(f2[0]) == pytest.approx(float(f[2]), rel=1e-12)
    assert torch.equal(stacked.row_count(), torch.as_tensor(masks[[1, 0, 1]].sum(1), dtype=torch.float64))


@pytest.mark.parametrize("data", [dict(n=400), HARD_PAIR])
def test_the_stacked_folds_score_what_one_fit_per_fold_scores(data):
    X, y = _digits(**data)
    splits = repeated_folds(y, folds=4, repeats=1, seed=0)
    Cs = np.logspace(-3, 2, 6)
    table = TorchLogisticRegression(tol=1e-4, max_iter=1000).score_folds(Cs, X, y, splits)
    assert table.shape == (4, 6) and np.isfinite(table[:, :2]).all()
    for f, (tr, te) in enumerate(splits):  # independent: scikit-learn fitted on the fold's rows, to a tight tolerance
        for j, C in enumerate(Cs):
            if not np.isfinite(table[f, j]):
                continue
            ref = LogisticRegression(C=C, tol=1e-10, max_iter=20000).fit(X[tr], y[tr])
            assert table[f, j] == pytest.approx(np.mean(ref.predict(X[te]) == y[te]), abs=2.5 / te.size)
        best = int(np.nanargmax(table[f]))  # refined to the full tolerance: the fold's own fit at that C
        ref = LogisticRegression(C=Cs[best], tol=1e-10, max_iter=20000).fit(X[tr], y[tr])
        assert table[f, best] == pytest.approx(np.mean(ref.predict(X[te]) == y[te]), abs=1.5 / te.size)


def test_each_fold_leaves_the_stack_past_its_own_peak():
    from transferlab.classifiers.fast_logreg import past_the_peak

    X, y = _digits(**HARD_PAIR)
    splits = repeated_folds(y, folds=4, repeats=1, seed=0)
    Cs = np.logspace(-3, 2, 6)
    table = TorchLogisticRegression().score_folds(Cs, X, y, splits)
    reached = np.isfinite(table).sum(1)
    assert len(set(reached.tolist())) > 1  # the folds stopped at different C values, in one stack
    for f, (_, te) in enumerate(splits):
        assert np.isfinite(table[f, :reached[f]]).all()  # a prefix of the path, then NaN
        if reached[f] < Cs.size:  # it stopped where its own path may stop, and not one C earlier
            assert past_the_peak(Cs, table[f], te.size)
            assert not past_the_peak(Cs, np.where(np.arange(Cs.size) < reached[f] - 1, table[f], np.nan), te.size)


def test_the_refine_leaves_out_only_neighbours_that_stay_clearly_below_the_best(monkeypatch):
    import transferlab.classifiers.fast_logreg as fast_logreg
    from transferlab.classifiers._batched_lbfgs import SubsetSolver

    X, y = _digits(n=400)
    splits = repeated_folds(y, folds=4, repeats=1, seed=0)
    Cs = np.logspace(-4, 2, 7)
    refined = []
    real = SubsetSolver.solve

    def spy(self, x0, C, group, *, tol, **kw):
        if tol == 1e-4:  # the refine (the screen runs at SCREEN_TOL)
            refined.extend(zip(np.asarray(group).tolist(), np.asarray(C).tolist()))
        return real(self, x0, C, group, tol=tol, **kw)

    monkeypatch.setattr(SubsetSolver, "solve", spy)
    table = TorchLogisticRegression(tol=1e-4, max_iter=1000).score_folds(Cs, X, y, splits)
    kept = set(refined)
    refined.clear()
    monkeypatch.setattr(fast_logreg, "PAST_PEAK_Z", 1e9)  # every neighbour refined: the rule off
    every = TorchLogisticRegression(tol=1e-4, max_iter=1000).score_folds(Cs, X, y, splits)
    left_out = set(refined) - kept
    assert left_out and kept < set(refined)  # the rule left some out on these folds
    for f, C in left_out:  # ... each, refined all the same, more than 2 standard errors below its fold's best
        p, n = np.nanmax(every[f]), splits[f][1].size
        assert every[f, list(Cs).index(C)] < p - 2 * np.sqrt(p * (1 - p) / n)
    assert (np.nanargmax(table, 1) == np.nanargmax(every, 1)).all()  # the same best C on every fold
