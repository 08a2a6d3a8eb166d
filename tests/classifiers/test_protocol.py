import joblib
import numpy as np
import pytest

from transferlab.classifiers.heads import make_head
from transferlab.classifiers.protocol import sample_shots, select_and_fit, stratified_holdout
from transferlab.util import UserInputError


@pytest.fixture
def noisy_digits(digits_arrays):
    """Digits with heavy noise, so that hyperparameters matter: train, val, test."""
    X, y, Xt, yt = digits_arrays
    rng = np.random.default_rng(0)
    X = (X + rng.normal(0, 2.0, X.shape)).astype(np.float32)
    Xt = (Xt + rng.normal(0, 2.0, Xt.shape)).astype(np.float32)
    return X[:400], y[:400], X[400:], y[400:], Xt, yt


def _val_choice(head, grid, X, y, Xv, yv, param):
    """Independent selection: fit each grid point on train, score on val, first best wins."""
    scores = [make_head(head, **{param: v}).fit(X, y).score(Xv, yv) for v in grid]
    return grid[int(np.argmax(scores))], scores


@pytest.mark.parametrize("head, param, grid", [("knn", "n_neighbors", [1, 25]), ("logreg", "C", [1e-4, 1e-2, 10.0])])
def test_selection_never_looks_at_test_rows(noisy_digits, head, param, grid):
    X, y, Xv, yv, Xt, yt = noisy_digits
    chosen, scores = _val_choice(head, grid, X, y, Xv, yv, param)
    # plant a test set on which another value wins: labels = that value's own predictions
    other = next(v for v in grid if v != chosen)
    adversary = make_head(head, **{param: other}).fit(np.concatenate([X, Xv]), np.concatenate([y, yv]))
    planted = adversary.predict(Xt)
    on_test = [make_head(head, **{param: v}).fit(np.concatenate([X, Xv]), np.concatenate([y, yv])).score(Xt, planted)
               for v in grid]
    assert grid[int(np.argmax(on_test))] != chosen  # selecting on test would change the choice

    planted_result = select_and_fit(X, y, Xv, yv, Xt, planted, head, grid=grid)
    rng = np.random.default_rng(1)
    garbage = select_and_fit(X, y, Xv, yv, rng.normal(size=Xt.shape), rng.integers(0, 10, len(yt)), head, grid=grid)
    assert planted_result.params == garbage.params == {param: chosen}
    assert planted_result.val_accuracy == pytest.approx(max(scores), abs=0.005)
    # a row apart at most (1 of 200): at C = 10 fits within the tolerance differ on a boundary row or so
    assert [s["val_accuracy"] for s in planted_result.val_scores] == pytest.approx(scores, abs=1.01 / len(yv))
    assert planted_result.test_accuracy < 1.0


def test_refit_on_train_plus_val_then_one_test_evaluation(noisy_digits):
    X, y, Xv, yv, Xt, yt = noisy_digits
    result = select_and_fit(X, y, Xv, yv, Xt, yt, "knn", grid=[3, 7])
    assert result.estimator.named_steps["head"].n_samples_fit_ == len(X) + len(Xv)
    assert (result.n_train, result.n_val, result.n_test) == (len(X), len(Xv), len(Xt))
    assert result.selection == "val split"
    assert result.test_accuracy == pytest.approx(np.mean(result.estimator.predict(Xt) == yt))
    assert result.report["accuracy"] == pytest.approx(result.test_accuracy)
    assert result.preprocessing == "l2" and result.seed == 0


def test_without_val_split_a_seeded_stratified_fraction_of_train_is_held_out(noisy_digits):
    X, y, _, _, Xt, yt = noisy_digits
    tr, va, reason = stratified_holdout(y, 0.25, seed=3)
    assert reason is None and len(va) == 100 and len(np.intersect1d(tr, va)) == 0
    assert np.abs(np.bincount(y[va], minlength=10) / 100 - np.bincount(y, minlength=10) / 400).max() < 0.02
    again, _, _ = stratified_holdout(y, 0.25, seed=3)
    other, _, _ = stratified_holdout(y, 0.25, seed=4)
    assert np.array_equal(tr, again) and not np.array_equal(tr, other)
    result = select_and_fit(X, y, None, None, Xt, yt, "knn", grid=[1, 25], val_fraction=0.25, seed=3)
    chosen, _ = _val_choice("knn", [1, 25], X[tr], y[tr], X[va], y[va], "n_neighbors")
    assert result.params == {"n_neighbors": chosen}
    assert (result.n_train, result.n_val) == (300, 100)
    assert result.estimator.named_steps["head"].n_samples_fit_ == 400
    assert result.selection.startswith("train fraction 0.25")


def test_one_shot_training_falls_back_to_default_hyperparameters(noisy_digits):
    X, y, _, _, Xt, yt = noisy_digits
    rows = sample_shots(y, 1, seed=0)
    result = select_and_fit(X[rows], y[rows], None, None, Xt, yt, "logreg")
    assert result.selection.startswith("none:") and "single training example" in result.selection
    assert result.params == {"C": 1.0} and result.val_accuracy is None and result.val_scores == []
    assert 0.1 < result.test_accuracy <= 1.0
    knn = select_and_fit(X[rows], y[rows], None, None, Xt, yt, "knn")
    assert knn.estimator.named_steps["head"].n_neighbors == 5 and knn.notes == []


def test_sample_shots_draws_k_per_class_nested_and_seeded():
    y = np.repeat(np.arange(4), [5, 6, 7, 8])
    five = sample_shots(y, 5, seed=0)
    assert np.array_equal(np.bincount(y[five]), [5, 5, 5, 5])
    assert set(sample_shots(y, 2, seed=0)) <= set(five)
    assert np.array_equal(five, sample_shots(y, 5, seed=0))
    assert not np.array_equal(sample_shots(y, 3, seed=0), sample_shots(y, 3, seed=1))
    with pytest.raises(UserInputError, match="class 0 has only 5"):
        sample_shots(y, 6, seed=0)
    with pytest.raises(UserInputError, match="positive"):
        sample_shots(y, 0)


def test_parallel_grid_gives_the_serial_result(noisy_digits):
    X, y, Xv, yv, Xt, yt = noisy_digits  # scikit-learn's LinearSVC: one joblib job per grid point
    serial = select_and_fit(X, y, Xv, yv, Xt, yt, "svm", grid=[0.01, 1.0, 100.0], solver="sklearn")
    loky = select_and_fit(X, y, Xv, yv, Xt, yt, "svm", grid=[0.01, 1.0, 100.0], solver="sklearn", n_jobs=2)
    with joblib.parallel_config(backend="threading"):
        threaded = select_and_fit(X, y, Xv, yv, Xt, yt, "svm", grid=[0.01, 1.0, 100.0], solver="sklearn", n_jobs=2)
    assert serial.val_scores == loky.val_scores == threaded.val_scores
    with pytest.raises(UserInputError, match="unknown joblib backend"):
        select_and_fit(X, y, Xv, yv, Xt, yt, "svm", grid=[1.0], backend="carrier-pigeon", solver="sklearn")


def test_sklearn_solver_for_logreg_selects_like_an_independent_search(noisy_digits):
    X, y, Xv, yv, Xt, yt = noisy_digits
    result = select_and_fit(X, y, Xv, yv, Xt, yt, "logreg", grid=[1e-4, 1e-2], solver="sklearn")
    chosen, scores = _val_choice("logreg", [1e-4, 1e-2], X, y, Xv, yv, "C")
    assert result.solver == "sklearn" and result.params == {"C": chosen}
    assert [s["val_accuracy"] for s in result.val_scores] == pytest.approx(scores, abs=0.005)


def test_single_class_training_labels_are_a_user_error(noisy_digits):
    X, _, _, _, Xt, yt = noisy_digits
    with pytest.raises(UserInputError, match="single class"):
        select_and_fit(X, np.full(len(X), 3), None, None, Xt, yt, "svm")


def test_dense_logreg_grid_skips_values_past_the_peak_and_says_so(noisy_digits):
    from transferlab.classifiers.fast_logreg import TorchLogisticRegression

    X, y, Xv, yv, Xt, yt = noisy_digits
    result = select_and_fit(X, y, Xv, yv, Xt, yt, "logreg", full_grid=True)
    values = [s["params"]["C"] for s in result.val_scores]
    missing = [v for v, s in zip(values, result.val_scores) if s["val_accuracy"] is None]
    assert len(values) == 45 and 0 < len(missing) < 45
    note = next(n for n in result.notes if "not fitted" in n)
    assert note.startswith(f"{len(missing)} of 45 grid values not fitted")
    assert result.params["C"] not in missing
    # the refit, started from the grid's solution, reaches the optimum a cold fit on train+val reaches
    scaler = result.estimator.named_steps["standardize"]
    Z = scaler.transform(np.concatenate([X, Xv]))
    cold = TorchLogisticRegression(C=result.params["C"]).fit(Z, np.concatenate([y, yv]))
    head = result.estimator.named_steps["head"]
    assert np.linalg.norm(head.coef_ - cold.coef_) / np.linalg.norm(cold.coef_) < 0.02
    assert np.mean(head.predict(scaler.transform(Xt)) == cold.predict(scaler.transform(Xt))) > 0.98


def test_logreg_selection_estimates_its_preconditioner_once_and_the_refit_still_reaches_the_optimum(monkeypatch):
    """Screen, refine and refit share one low-rank preconditioner (wide features: 300 dims): it
    shapes convergence only, so the refit on train+val lands on scikit-learn's optimum."""
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from transferlab.classifiers._batched_lbfgs import lowrank_spectrum

    X, y = make_classification(n_samples=900, n_features=300, n_informative=20, n_classes=4, random_state=0)
    X = X.astype(np.float32)
    calls = []
    monkeypatch.setattr("transferlab.classifiers._batched_lbfgs.lowrank_spectrum",
                        lambda *a, **k: calls.append(a[0].n) or lowrank_spectrum(*a, **k))
    result = select_and_fit(X[:600], y[:600], None, None, X[600:], y[600:], "logreg", full_grid=True)
    assert calls == [480]  # once, on the 480 training rows the holdout leaves
    Z = result.estimator.named_steps["standardize"].transform(X[:600])
    ref = LogisticRegression(C=result.params["C"], tol=1e-8, max_iter=5000).fit(Z, y[:600]).coef_
    coef = result.estimator.named_steps["head"].coef_
    assert np.linalg.norm(coef - ref) / np.linalg.norm(ref) < 0.02


@pytest.mark.parametrize("head", ["knn", "logreg", "mlp"])
@pytest.mark.parametrize("where, name", [(0, "training features"), (2, "validation features"), (4, "test features")])
def test_a_non_finite_feature_anywhere_is_a_one_line_error_naming_its_rows(noisy_digits, head, where, name):
    """select_and_fit checks every row itself, before scikit-learn's own checks (switched off inside it) would."""
    arrays = [a.copy() for a in noisy_digits]
    arrays[where][3, 5] = np.inf if where == 2 else np.nan
    with pytest.raises(UserInputError, match=f"^{name} contains NaN or infinite values: re-extract the features$"):
        select_and_fit(*arrays, head, grid=[1, 3] if head == "knn" else [1e-2, 1.0])
