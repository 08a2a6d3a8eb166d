import pickle

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from transferlab.classifiers._batched_lbfgs import Problem, RowSource
from transferlab.classifiers.fast_logreg import BatchedLogisticRegressionCV, TorchLogisticRegression, fit_logreg_path
from transferlab.util import UserInputError

LBFGS = "transferlab.classifiers._batched_lbfgs"  # the solver's module, whose settings tests patch


def _sk(C, X, y):
    return LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(X, y)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("C", [0.01, 0.1, 1.0])
def test_matches_sklearn_coefficients_and_accuracy(digits_arrays, C):
    X, y, Xt, yt = digits_arrays
    sk = _sk(C, X, y)
    path = fit_logreg_path(X, y, [C], tol=1e-5, max_iter=1000)
    coef, intercept = path.coefs[0], path.intercepts[0]
    assert coef.shape == sk.coef_.shape == (10, 64)
    assert _rel(coef, sk.coef_) < 1e-2
    # intercepts are defined up to a constant shared by all classes
    assert _rel(intercept - intercept.mean(), sk.intercept_ - sk.intercept_.mean()) < 2e-2
    acc = np.mean(path.predict(Xt)[0] == yt)
    assert abs(acc - sk.score(Xt, yt)) <= 0.005


def test_binary_problem_matches_sklearn_binomial_layout(digits_arrays):
    X, y, Xt, yt = digits_arrays
    yb, ytb = (y >= 5).astype(int), (yt >= 5).astype(int)
    sk = _sk(0.1, X, yb)
    model = TorchLogisticRegression(C=0.1, tol=1e-5, max_iter=1000).fit(X, yb)
    assert model.coef_.shape == (1, 64)
    assert _rel(model.coef_, sk.coef_) < 1e-2
    assert model.intercept_ == pytest.approx(sk.intercept_, abs=1e-2)
    assert abs(model.score(Xt, ytb) - sk.score(Xt, ytb)) <= 0.005
    np.testing.assert_allclose(model.predict_proba(Xt), sk.predict_proba(Xt), atol=1e-2)


def test_fewer_rows_than_dimensions_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 200)).astype(np.float32)
    y = np.repeat(np.arange(3), 10)
    X[:, :3] += 2.0 * np.eye(3)[y]
    sk = _sk(0.5, X, y)
    path = fit_logreg_path(X, y, [0.5], tol=1e-5, max_iter=1000)
    assert _rel(path.coefs[0], sk.coef_) < 1e-2


def test_grid_path_equals_each_C_fitted_alone(digits_arrays):
    X, y, _, _ = digits_arrays
    Cs = [1.0, 0.001, 0.1]  # unsorted on purpose: results come back in this order
    path = fit_logreg_path(X, y, Cs, tol=1e-5, max_iter=1000, block_size=2)
    for i, C in enumerate(Cs):
        alone = fit_logreg_path(X, y, [C], tol=1e-5, max_iter=1000)
        assert _rel(path.coefs[i], alone.coefs[0]) < 1e-2
    assert path.n_iter.max() < 1000


def test_chunked_hdf5_gives_the_in_memory_result(digits_arrays, tmp_path):
    import h5py

    X, y, _, _ = digits_arrays
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, X.shape[1]))
    in_memory = fit_logreg_path(X, y, [0.01, 1.0], tol=1e-8, max_iter=1000, dtype="float64")
    budget = 150 * X.shape[1] * 4  # a quarter of the rows at a time
    with h5py.File(tmp_path / "x.h5", "r") as f:
        assert RowSource(f["X"], "cpu", budget, torch.float32).streamed
        assert RowSource(f["X"], "cpu", budget, torch.float32).rows == 128
        chunked = fit_logreg_path(f["X"], y, [0.01, 1.0], tol=1e-8, max_iter=1000, memory_budget=budget,
                                  dtype="float64")
    for i in range(2):
        assert _rel(chunked.coefs[i], in_memory.coefs[i]) < 1e-5
    np.testing.assert_array_equal(chunked.predict(X), in_memory.predict(X))


def test_cv_scores_are_validation_accuracies_and_pick_the_best(digits_arrays):
    X, y, Xv, yv = digits_arrays
    Cs = [1e-4, 1e-2, 1.0]
    cv = BatchedLogisticRegressionCV(Cs=Cs, tol=1e-5, max_iter=1000, refit=False).fit(X, y, Xv, yv)
    independent = [_sk(C, X, y).score(Xv, yv) for C in Cs]
    np.testing.assert_allclose(cv.scores_, independent, atol=0.005)
    assert cv.C_ == Cs[int(np.argmax(cv.scores_))]
    assert cv.score(Xv, yv) == pytest.approx(max(cv.scores_))
    assert cv.estimator_for(1e-2).score(Xv, yv) == pytest.approx(cv.scores_[1])


def test_cv_refits_on_train_and_val_at_the_chosen_c(digits_arrays):
    X, y, Xv, yv = digits_arrays
    cv = BatchedLogisticRegressionCV(Cs=[1e-4, 1e-2, 1.0], tol=1e-6, max_iter=1000).fit(X, y, Xv, yv)
    X_all, y_all = np.concatenate([X, Xv]), np.concatenate([y, yv])
    direct = TorchLogisticRegression(C=cv.C_, tol=1e-6, max_iter=1000).fit(X_all, y_all)
    ref = _sk(cv.C_, X_all.astype(np.float64), y_all).coef_
    train_only = cv.path_.coefs[int(np.flatnonzero(cv.path_.Cs == cv.C_)[0])]
    # the refit starts from the train-only solution (and its preconditioner): it stops as close to
    # the train+val optimum as a cold fit does, far closer than where it started, in fewer iterations
    assert _rel(cv.coef_, ref) < 2 * _rel(direct.coef_, ref) + 1e-4
    assert _rel(train_only, ref) > 20 * _rel(cv.coef_, ref)
    assert cv.n_iter_[0] < direct.n_iter_[0]


def test_cv_plain_fit_holds_out_its_own_stratified_validation_rows(digits_arrays):
    from sklearn.model_selection import train_test_split

    X, y, _, _ = digits_arrays
    Cs = [1e-4, 1e-2, 1.0]
    cv = BatchedLogisticRegressionCV(Cs=Cs, tol=1e-5, max_iter=1000, val_fraction=0.25, random_state=3).fit(X, y)
    tr, va = train_test_split(np.arange(len(y)), test_size=150, stratify=y, random_state=3)
    independent = [_sk(C, X[tr], y[tr]).score(X[va], y[va]) for C in Cs]
    np.testing.assert_allclose(cv.scores_, independent, atol=0.01)
    assert "held-out" in cv.selection_ and cv.C_ == Cs[int(np.argmax(cv.scores_))]
    # string labels work as in any scikit-learn classifier
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
    assert set(BatchedLogisticRegressionCV(Cs=Cs).fit(X, names[y]).predict(X[:20])) <= set(names)


def test_estimator_follows_the_sklearn_contract(digits_arrays):
    X, y, Xt, _ = digits_arrays
    model = TorchLogisticRegression(C=0.3, max_iter=50)
    assert clone(model).get_params() == model.get_params()
    assert not hasattr(model, "coef_")
    fitted = model.fit(X, y)
    assert fitted is model
    proba = model.predict_proba(Xt)
    np.testing.assert_allclose(proba, softmax(model.decision_function(Xt), axis=1), rtol=1e-5)
    np.testing.assert_array_equal(model.predict(Xt), proba.argmax(1))
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(Xt), model.predict(Xt))


def test_bad_inputs_raise_user_errors(digits_arrays):
    X, y, _, _ = digits_arrays
    with pytest.raises(UserInputError, match="single class"):
        fit_logreg_path(X, np.zeros(len(y), dtype=int), [1.0])
    with pytest.raises(UserInputError, match="positive"):
        fit_logreg_path(X, y, [0.0])
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        fit_logreg_path(bad, y, [1.0])


def test_diagonal_preconditioner_reaches_the_same_solution(digits_arrays):
    X, y, _, _ = digits_arrays
    eigh = fit_logreg_path(X, y, [0.1], tol=1e-5, max_iter=1000)
    diag = fit_logreg_path(X, y, [0.1], tol=1e-5, max_iter=1000, preconditioner="diag")
    assert _rel(diag.coefs[0], eigh.coefs[0]) < 1e-2
    assert _rel(diag.coefs[0], _sk(0.1, X, y).coef_) < 1e-2


def test_low_rank_preconditioner_for_wide_features_matches_sklearn():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=600, n_features=300, n_informative=20, n_classes=4, random_state=0)
    X = X.astype(np.float32)
    for pre in ("auto", "lowrank"):  # 300 dims > 2 x rank 128: auto picks the low-rank one
        path = fit_logreg_path(X, y, [0.05], tol=1e-5, max_iter=1000, preconditioner=pre)
        assert _rel(path.coefs[0], _sk(0.05, X, y).coef_) < 1e-2


def _objective(C, coef, intercept, X, y):
    p = softmax(X @ coef.T + intercept, axis=1)
    return C * -np.log(p[np.arange(len(y)), y]).sum() + 0.5 * (coef ** 2).sum()


def test_large_C_warm_starts_are_not_taken_as_converged(digits_arrays):
    """Along the path each large C gets its own solution, at least as good as sklearn's default fit."""
    X, y, _, _ = digits_arrays
    Cs = [1.0, 100.0, 1e4]
    path = fit_logreg_path(X, y, Cs)  # default tol, warm starts along the path
    for i, C in enumerate(Cs):
        sk = LogisticRegression(C=C, max_iter=100).fit(X, y)  # scikit-learn's defaults
        mine = _objective(C, path.coefs[i], path.intercepts[i], X, y)
        assert mine <= 1.01 * _objective(C, sk.coef_, sk.intercept_, X, y), C
    assert path.n_iter[1] > 0 and path.n_iter[2] > 0
    assert _rel(path.coefs[2], path.coefs[1]) > 0.05


def _grid_solves(monkeypatch):
    """Every grid solve score_grid runs, recorded: its Cs, rows, tol, precision, scores and path."""
    from types import SimpleNamespace

    calls, original = [], BatchedLogisticRegressionCV.fit

    def fit(self, X, y, X_val=None, y_val=None, **kwargs):
        original(self, X, y, X_val, y_val, **kwargs)
        calls.append(SimpleNamespace(Cs=np.asarray(self.Cs, dtype=float), rows=X.shape[0], tol=self.tol,
                                     precision=self.precision, scores=self.scores_.copy(), path=self.path_))
        return self

    monkeypatch.setattr(BatchedLogisticRegressionCV, "fit", fit)
    return calls


def _digit_pixels():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def _refine_case(case):
    """(train, val, screen_rows, whether the screen's top is flat) for each branch of the refine rule."""
    from sklearn.datasets import make_classification

    X, y = _digit_pixels()
    if case in ("flat, all rows", "flat, subsample"):
        return (X[:1200], y[:1200], X[1200:], y[1200:]), (None if case == "flat, all rows" else 400), True
    if case == "peaked, all rows":  # noisy pixels: a narrow peak on 1197 validation rows
        noisy = (X + np.random.default_rng(0).normal(0, 1.0, X.shape)).astype(np.float32)
        return (noisy[:600], y[:600], noisy[600:], y[600:]), None, False
    X, y = make_classification(n_samples=4000, n_features=200, n_informative=10, n_redundant=0, n_classes=3,
                               flip_y=0.1, class_sep=0.8, random_state=0)
    X = X.astype(np.float32)
    return (X[:300], y[:300], X[300:], y[300:]), 150, False


@pytest.mark.parametrize("case", ["flat, all rows", "flat, subsample", "peaked, all rows", "peaked, subsample"])
def test_score_grid_refines_fewer_values_when_the_screen_is_flat_within_noise(case, monkeypatch):
    """The refine step, checked against the screen it followed: the best C and its two grid neighbours
    when the screen's neighbours of its best score more than one standard error below it; only the
    best when they are within it (none when the screen already ran on all rows: its solution serves)."""
    from transferlab.classifiers._batched_lbfgs import bfloat16_pays

    (X, y, Xv, yv), rows, flat = _refine_case(case)
    Cs = np.logspace(-4, 2, 25)
    calls = _grid_solves(monkeypatch)
    head = TorchLogisticRegression(screen_rows=rows)
    scores = np.array(head.score_grid(Cs, X, y, Xv, yv))
    screen, refine = calls[0], calls[1:]
    assert screen.rows == (rows or len(y)) and screen.tol == 1e-3
    assert screen.precision == ("bfloat16" if bfloat16_pays("cpu", screen.rows, X.shape[1]) else "auto")
    # the screen's validation accuracies, computed here from its coefficients (NaN: not reached)
    acc = np.array([np.mean((Xv @ W.T + b).argmax(1) == yv) if np.isfinite(W).all() else np.nan
                    for W, b in zip(screen.path.coefs, screen.path.intercepts)])
    np.testing.assert_allclose(screen.scores, acc, atol=1.5 / len(yv))
    j = int(np.nanargmax(acc))
    p = acc[j]
    near = [acc[i] for i in (j - 1, j + 1) if 0 <= i < acc.size and np.isfinite(acc[i])]
    assert (bool(near) and min(near) >= p - np.sqrt(p * (1 - p) / len(yv))) == flat  # this case's branch
    best = 2 * j  # the screen solved every other C of the grid
    expected = ([best] if rows else []) if flat else list(range(max(0, best - 1), best + 2))
    assert [list(c.Cs) for c in refine] == ([list(Cs[expected])] if expected else [])
    for c in refine:  # on all rows, to the head's own tolerance and precision
        assert c.rows == len(y) and c.tol == head.tol and c.precision == head.precision
    kept = [i for i in range(acc.size) if np.isfinite(acc[i]) and 2 * i not in expected]  # screen scores stay
    np.testing.assert_allclose(scores[[2 * i for i in kept]], acc[kept], atol=1.5 / len(yv))
    if expected:  # refined values carry their all-rows scores: those of direct fits (a row or two apart)
        direct = BatchedLogisticRegressionCV(Cs=Cs[expected], refit=False, stop_past_peak=False).fit(X, y, Xv, yv)
        np.testing.assert_allclose(scores[expected], direct.scores_, atol=2.5 / len(yv))
    # the refit starts from the chosen C's solution on all training rows: the refine's, close to a
    # direct fit's, or (nothing refined) the screen's own
    chosen = int(np.nanargmax(scores))
    coef, _ = head.grid_solution(Cs[chosen])
    if expected:
        assert _rel(coef, TorchLogisticRegression(C=Cs[chosen]).fit(X, y).coef_) < 0.05
    else:
        np.testing.assert_array_equal(coef, screen.path.coefs[chosen // 2])


def test_score_grid_screens_large_training_sets_on_a_subsample():
    X, y = _digit_pixels()
    Cs = np.logspace(-4, 2, 13)
    args = (X[:1200], y[:1200], X[1200:], y[1200:])
    full = TorchLogisticRegression(screen_rows=None).score_grid(Cs, *args)
    screened = TorchLogisticRegression(screen_rows=400).score_grid(Cs, *args)
    best = int(np.nanargmax(screened))
    assert screened != full  # the others come from the 400-row screen
    # its choice scores, screened on all rows, within noise of the all-rows screen's best
    top = np.nanmax(full)
    assert full[best] >= top - 2 * np.sqrt(top * (1 - top) / len(y[1200:]))
    assert np.nanmax(screened) >= top - 0.01


def _wide():
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=600, n_features=300, n_informative=20, n_classes=4, random_state=0)
    return X.astype(np.float32), y


def _few_rows():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 200)).astype(np.float32)
    y = np.repeat(np.arange(3), 10)
    X[:, :3] += 2.0 * np.eye(3)[y]
    return X, y


@pytest.mark.parametrize("case", ["multiclass", "binary", "wide-lowrank", "fewer-rows-than-dims"])
def test_starting_from_its_own_solution_is_already_converged(digits_arrays, case):
    """``init`` maps coefficients back into the solver's coordinates exactly: eigenbasis rotation
    (multiclass, binary), the low-rank preconditioner's raw coordinates, the row-space basis."""
    X, y, _, _ = digits_arrays
    if case == "binary":
        y = (y >= 5).astype(int)
    elif case == "wide-lowrank":
        X, y = _wide()
    elif case == "fewer-rows-than-dims":
        X, y = _few_rows()
    first = fit_logreg_path(X, y, [0.05, 0.5], max_iter=1000)
    assert first.converged.all()
    again = fit_logreg_path(X, y, [0.05, 0.5], max_iter=1000, init=(first.coefs, first.intercepts))
    assert np.all(again.n_iter == 0) and again.converged.all(), again.n_iter
    assert _rel(again.coefs, first.coefs) < 1e-4
    np.testing.assert_allclose(again.intercepts, first.intercepts, atol=1e-3)


def test_a_warm_started_fit_reaches_the_same_optimum_in_fewer_iterations(digits_arrays):
    X, y, _, _ = digits_arrays
    near = TorchLogisticRegression(C=0.05, tol=1e-6, max_iter=1000).fit(X, y)
    # full-precision passes only: mixed precision counts its cheap and full passes alike
    cold = TorchLogisticRegression(C=0.1, tol=1e-6, max_iter=1000, precision="exact").fit(X, y)
    warm = TorchLogisticRegression(C=0.1, tol=1e-6, max_iter=1000, precision="exact").fit(
        X, y, coef_init=near.coef_, intercept_init=near.intercept_)
    assert _objective(0.1, warm.coef_, warm.intercept_, X, y) == pytest.approx(
        _objective(0.1, cold.coef_, cold.intercept_, X, y), rel=1e-5)
    assert _rel(warm.coef_, _sk(0.1, X, y).coef_) < 1e-2
    assert warm.n_iter_[0] < cold.n_iter_[0]
    with pytest.raises(UserInputError, match="init must hold finite coefficients"):
        TorchLogisticRegression(C=0.1).fit(X, y, coef_init=np.full((10, 64), np.nan))


def test_past_the_peak_needs_a_decade_clearly_below_the_best():
    from transferlab.classifiers.fast_logreg import past_the_peak

    Cs = np.logspace(-3, 1, 9)  # half a decade apart
    se = np.sqrt(0.8 * 0.2 / 400)
    rising = [0.5, 0.6, 0.7, 0.8, np.nan, np.nan, np.nan, np.nan, np.nan]
    assert not past_the_peak(Cs, rising, 400)
    within_noise = [0.5, 0.6, 0.7, 0.8, 0.8 - 1.5 * se, 0.8 - 1.9 * se, np.nan, np.nan, np.nan]
    assert not past_the_peak(Cs, within_noise, 400)  # a decade past the best, but within 2 SE
    half_decade = [0.5, 0.6, 0.7, 0.8, 0.8 - 3 * se, np.nan, np.nan, np.nan, np.nan]
    assert not past_the_peak(Cs, half_decade, 400)  # clearly lower, but only half a decade on
    clear = [0.5, 0.6, 0.7, 0.8, 0.8 - 1.5 * se, 0.8 - 2.1 * se, 0.8 - 2.5 * se, np.nan, np.nan]
    assert past_the_peak(Cs, clear, 400)  # the last decade (two values) is more than 2 SE below
    shuffled = np.random.default_rng(0).permutation(9)  # grid order does not matter, C order does
    assert past_the_peak(Cs[shuffled], np.array(clear)[shuffled], 400)
    assert not past_the_peak(Cs, [np.nan] * 9, 400)


def _noisy(digits_arrays):
    X, y, Xv, yv = digits_arrays
    rng = np.random.default_rng(0)
    return ((X + rng.normal(0, 2.0, X.shape)).astype(np.float32), y,
            (Xv + rng.normal(0, 2.0, Xv.shape)).astype(np.float32), yv)


def test_the_path_stops_past_the_validation_peak_and_chooses_what_the_whole_path_chooses(digits_arrays):
    X, y, Xv, yv = _noisy(digits_arrays)
    Cs = np.logspace(-5, 3, 33)  # a quarter decade apart, like the full 45-value grid
    whole = BatchedLogisticRegressionCV(Cs=Cs, refit=False, stop_past_peak=False).fit(X, y, Xv, yv)
    stopped = BatchedLogisticRegressionCV(Cs=Cs, refit=False).fit(X, y, Xv, yv)
    solved = np.isfinite(stopped.scores_)
    k = int(solved.sum())
    assert 0 < k < Cs.size and solved[:k].all()  # a prefix in increasing C, NaN after it
    assert np.all(stopped.path_.n_iter[k:] == 0) and np.isnan(stopped.path_.coefs[k:]).all()
    np.testing.assert_allclose(stopped.scores_[:k], whole.scores_[:k], atol=1e-12)  # the same blocks, solved alike
    assert stopped.C_ == whole.C_
    with pytest.raises(ValueError, match="was not fitted: the path stopped past the validation peak"):
        stopped.estimator_for(Cs[-1])
    # the rule, checked by hand: the last decade solved lies more than 2 SE below the best
    p = np.nanmax(stopped.scores_)
    last = Cs[k - 1]
    window = (Cs > last / 10 * (1 + 1e-9)) & solved & (Cs > stopped.C_)
    assert np.all(stopped.scores_[window] < p - 2 * np.sqrt(p * (1 - p) / len(yv)))


def test_score_grid_coarse_to_fine_chooses_within_noise_of_the_whole_grid(digits_arrays):
    X, y, Xv, yv = _noisy(digits_arrays)
    Cs = np.logspace(-5, 3, 33)
    whole = BatchedLogisticRegressionCV(Cs=Cs, refit=False, stop_past_peak=False).fit(X, y, Xv, yv).scores_
    head = TorchLogisticRegression()
    scores = np.array(head.score_grid(Cs, X, y, Xv, yv))
    fitted = np.isfinite(scores)
    best = int(np.nanargmax(scores))
    assert fitted.sum() < Cs.size / 2 + 3  # every other value, then at most two neighbours of the best
    # the screen's values, solved to a 10x looser tolerance (in bfloat16 where native), within a point
    np.testing.assert_allclose(scores[fitted], whole[fitted], atol=0.015)
    assert whole[best] >= whole.max() - 2 * np.sqrt(whole.max() * (1 - whole.max()) / len(yv))
    assert head.grid_solution(Cs[-1]) is None  # never fitted


def test_low_rank_preconditioner_from_sampled_rows_reaches_the_same_optimum(monkeypatch):
    X, y = _wide()
    monkeypatch.setattr(f"{LBFGS}.LOWRANK_ROWS", 150)  # 600 rows: every 4th
    path = fit_logreg_path(X, y, [0.05], tol=1e-5, max_iter=1000, preconditioner="lowrank")
    assert _rel(path.coefs[0], _sk(0.05, X, y).coef_) < 1e-2


@pytest.mark.parametrize("kind", ["lowrank", "eigh", "diag"])
def test_a_reused_preconditioner_reaches_the_same_optimum_without_estimating_one(kind, monkeypatch):
    """A path's preconditioner, from a subsample, serves a solve on all rows (scaled by the row
    count): the same optimum as scikit-learn's, and no pass over the rows to estimate it."""
    X, y = _wide()
    first = fit_logreg_path(X[:400], y[:400], [0.05], tol=1e-5, max_iter=1000, preconditioner=kind)
    kept = first.preconditioner
    assert kept.kind == kind and kept.n == 400
    assert all(a is None or isinstance(a, np.ndarray) for a in (kept.V, kept.lam))  # pickles without torch

    def no_estimate(*args, **kwargs):
        raise AssertionError("estimated a preconditioner it was given")

    monkeypatch.setattr(f"{LBFGS}.lowrank_spectrum", no_estimate)
    monkeypatch.setattr(torch.linalg, "eigh", no_estimate)
    path = fit_logreg_path(X, y, [0.05], tol=1e-5, max_iter=1000, preconditioner=kept)
    assert path.preconditioner is kept
    assert _rel(path.coefs[0], _sk(0.05, X, y).coef_) < 1e-2


def test_a_preconditioner_from_other_rows_never_replaces_the_exact_row_space_basis():
    """With fewer rows than dimensions the solve works in the rows' own span (exact); a preconditioner
    from other rows is ignored there, and none is handed on (the basis spans only these rows)."""
    Xw, yw = _wide()
    X, y = _few_rows()
    kept = fit_logreg_path(Xw[:, :200], yw, [0.05]).preconditioner
    path = fit_logreg_path(X, y, [0.5], tol=1e-6, max_iter=1000, preconditioner=kept)
    assert path.preconditioner is None
    assert _rel(path.coefs[0], _sk(0.5, X, y).coef_) < 1e-2


def test_passes_in_cache_sized_chunks_give_the_whole_array_result(digits_arrays, monkeypatch):
    """On a CPU the rows held in memory are passed in chunks of about ``CPU_CHUNK_BYTES``: the
    same objective and gradient as one pass over all rows, computed here directly."""
    X, y, _, _ = digits_arrays
    monkeypatch.setattr(f"{LBFGS}.CPU_CHUNK_BYTES", 64 * 4 * 256)  # 256 rows of 64 floats
    source = RowSource(X, "cpu", 2**30, torch.float64)
    assert source.rows == 256 and len(list(source.chunks())) == 3  # 600 rows
    problem = Problem(source, y, 10, torch.zeros(64, dtype=torch.float64), None, None)
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(10, 64)) * 0.1, rng.normal(size=10) * 0.1
    x = torch.as_tensor(np.concatenate([W.ravel(), b]))[None]
    f, grad, _ = problem.evaluate(x, torch.tensor([0.3], dtype=torch.float64))
    assert float(f[0]) == pytest.approx(_objective(0.3, W, b, X.astype(np.float64), y), rel=1e-10)
    p = softmax(X.astype(np.float64) @ W.T + b, axis=1)
    p[np.arange(y.size), y] -= 1
    np.testing.assert_allclose(grad[0, :640].numpy().reshape(10, 64), 0.3 * p.T @ X + W, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grad[0, 640:].numpy(), 0.3 * p.sum(0), rtol=1e-8, atol=1e-10)


def _passes(monkeypatch):
    """Count the solver's passes over the rows: [bfloat16 ones, full-precision ones]."""
    counts, original = [0, 0], Problem.evaluate

    def evaluate(self, x, C, ids=None):
        counts[self.source.low_center is None] += x.shape[0]
        return original(self, x, C, ids)

    monkeypatch.setattr(Problem, "evaluate", evaluate)
    return counts


def _gradient_max(C, coef, intercept, X, y):
    """max |gradient| / (C n) of the objective at (coef, intercept), in float64: the stopping rule."""
    X = X.astype(np.float64)
    p = softmax(X @ coef.T + intercept, axis=1)
    p[np.arange(y.size), y] -= 1
    return max(np.abs(C * p.T @ X + coef).max(), np.abs(C * p.sum(0)).max()) / (C * y.size)


@pytest.mark.parametrize("shift", [0.0, 50.0])
def test_bfloat16_passes_give_objective_and_gradient_to_bfloat16_precision(digits_arrays, shift):
    """A bfloat16 pass rounds the rows centred (rounding uncentred rows 50 away from zero would lose
    their spread), multiplies in bfloat16 and sums in float32: about three significant digits."""
    X, y, _, _ = digits_arrays
    X = X + np.float32(shift)
    source = RowSource(X, "cpu", 2**30, torch.float32)
    mu = torch.as_tensor(X.mean(0))
    problem = Problem(source, y, 10, mu, None, None)
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(10, 64)) * 0.1, rng.normal(size=10) * 0.1
    b_solver = b + W @ X.mean(0).astype(np.float64)  # the solver's intercept is on centred rows
    x = torch.as_tensor(np.concatenate([W.ravel(), b_solver]), dtype=torch.float32)[None]
    C = torch.tensor([0.3])
    source.low_center = mu
    f, grad, _ = problem.evaluate(x, C)
    source.low_center = None
    X64 = X.astype(np.float64)
    assert float(f[0]) == pytest.approx(_objective(0.3, W, b, X64, y), rel=1e-3)
    p = softmax(X64 @ W.T + b, axis=1)
    p[np.arange(y.size), y] -= 1
    exact = 0.3 * p.T @ (X64 - X64.mean(0)) + W  # (the solver's W-gradient is on centred rows)
    assert np.abs(grad[0, :640].numpy().reshape(10, 64) - exact).max() <= 1e-2 * np.abs(exact).max()


def test_mixed_precision_stops_by_the_full_precision_rule(digits_arrays, monkeypatch):
    """"mixed" passes in bfloat16, then in full precision until the float32 gradient meets the
    tolerance: the optimum of an exact solve, checked in float64."""
    X, y, _, _ = digits_arrays
    counts = _passes(monkeypatch)
    path = fit_logreg_path(X, y, [0.1], tol=1e-4, max_iter=1000, precision="mixed")
    low, full = counts
    assert low > 0 and full > 0 and path.converged.all()
    assert _gradient_max(0.1, path.coefs[0], path.intercepts[0], X, y) <= 1.5e-4
    assert _rel(path.coefs[0], _sk(0.1, X, y).coef_) < 2e-2


def test_bfloat16_precision_runs_every_pass_in_bfloat16(digits_arrays, monkeypatch):
    X, y, Xv, yv = digits_arrays
    counts = _passes(monkeypatch)
    path = fit_logreg_path(X, y, [0.01, 0.1], tol=1e-3, max_iter=1000, precision="bfloat16")
    # one full-precision pass for the block (both C values), once a gradient stopped falling: its bfloat16 error
    assert counts[0] > 10 and counts[1] == 2
    counts[:] = [0, 0]
    fit_logreg_path(X, y, [0.01, 0.1], tol=1e-2, max_iter=1000, precision="bfloat16")
    assert counts[0] > 0 and counts[1] == 0  # a descent that meets the tolerance smoothly measures nothing
    exact = fit_logreg_path(X, y, [0.01, 0.1], tol=1e-3, max_iter=1000, precision="exact")
    assert _rel(path.coefs, exact.coefs) < 0.05
    assert np.abs((path.predict(Xv) == yv).mean(1) - (exact.predict(Xv) == yv).mean(1)).max() <= 0.01


def test_a_bfloat16_phase_ends_at_its_own_rounding_error_not_after_a_stall(digits_arrays, monkeypatch):
    """A tolerance below bfloat16's reach: the phase stops where the gradient meets twice the error measured
    against one full-precision pass (converged), instead of iterating until ``LOW_STALL`` iterations set no
    new low (not converged, the iterations wasted)."""
    X, y, Xv, yv = digits_arrays
    path = fit_logreg_path(X, y, [0.1, 1.0], tol=1e-12, max_iter=1000, precision="bfloat16")
    assert path.converged.all()
    exact = fit_logreg_path(X, y, [0.1, 1.0], tol=1e-6, max_iter=1000, precision="exact")
    assert np.abs((path.predict(Xv) == yv).mean(1) - (exact.predict(Xv) == yv).mean(1)).max() <= 0.01
    assert path.n_iter.max() < exact.n_iter.max()


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_mixed_only_where_bfloat16_pays(digits_arrays, monkeypatch, native):
    X, y, _, _ = digits_arrays  # 600 rows of 64 features
    monkeypatch.setattr(f"{LBFGS}.native_bfloat16", lambda device: native)
    counts = _passes(monkeypatch)
    fit_logreg_path(X, y, [0.1], precision="auto")
    assert counts[0] == 0 and counts[1] > 0  # too few rows (and dimensions) to pay
    monkeypatch.setattr(f"{LBFGS}.LOW_MIN_ROWS", 500)
    counts[:] = [0, 0]
    fit_logreg_path(X, y, [0.1], precision="auto")
    assert counts[0] == 0 and counts[1] > 0  # enough rows, too few dimensions
    monkeypatch.setattr(f"{LBFGS}.LOW_MIN_DIMS", 64)
    counts[:] = [0, 0]
    fit_logreg_path(X, y, [0.1], precision="auto")
    assert (counts[0] > 0) == native and counts[1] > 0
    counts[:] = [0, 0]
    fit_logreg_path(X, y, [0.1], precision="auto", dtype="float64")  # float64 asks for full precision
    assert counts[0] == 0
    with pytest.raises(UserInputError, match="precision must be one of"):
        fit_logreg_path(X, y, [0.1], precision="half")


def test_a_path_starts_each_block_from_the_extrapolation_of_the_last_two_solutions(digits_arrays, monkeypatch):
    """Walking C upwards, the next C starts from the last solution plus its last step, scaled to the
    gap in log C and at most one step: closer to its optimum than the last solution is."""
    import transferlab.classifiers._batched_lbfgs as lbfgs

    X, y, _, _ = digits_arrays
    starts, solutions, original = [], [], lbfgs._lbfgs

    def record(problem, x, C, *args, **kwargs):
        starts.append(x.clone())
        out = original(problem, x, C, *args, **kwargs)
        solutions.append(out[0].clone())
        return out

    monkeypatch.setattr(lbfgs, "_lbfgs", record)
    Cs = [1e-3, 1e-2, 10 ** -1.5, 1.0]  # steps of 1, 0.5 and 1.5 decades
    fit_logreg_path(X, y, Cs, block_size=1, tol=1e-6, max_iter=1000, precision="exact")
    s1, s2, s3 = (s[0] for s in solutions[:3])
    assert torch.count_nonzero(starts[0]) == 0 and torch.equal(starts[1][0], s1)
    torch.testing.assert_close(starts[2][0], s2 + 0.5 * (s2 - s1))
    torch.testing.assert_close(starts[3][0], s3 + 1.0 * (s3 - s2))  # 3 steps of 0.5 decade away: capped at 1
    # each start is nearer its own solution than the previous solution is
    for k in (2, 3):
        assert torch.norm(starts[k][0] - solutions[k][0]) < torch.norm(solutions[k - 1][0] - solutions[k][0])
