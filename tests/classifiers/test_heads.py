import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC

from transferlab.classifiers.fast_logreg import TorchLogisticRegression
from transferlab.classifiers.heads import adapt_to_data, available_heads, default_grid, default_preprocessing, make_head
from transferlab.util import UserInputError


def _shrunk_standardize(k=10.0):
    """The shrunk standardisation computed directly: scale_j = sqrt((n var_j + k mean(var)) / (n + k))."""
    from sklearn.preprocessing import FunctionTransformer

    class Ref(FunctionTransformer):
        def fit(self, X, y=None):
            n, var = X.shape[0], X.var(0)
            self.mu_, self.sd_ = X.mean(0), np.sqrt((n * var + k * var.mean()) / (n + k))
            return self

        def transform(self, X):
            return (X - self.mu_) / self.sd_

    return Ref()


DIRECT = {
    "svm": (dict(C=0.1, solver="sklearn"),
            lambda: make_pipeline(Normalizer(), LinearSVC(C=0.1, random_state=0, max_iter=5000))),
    "svm-rbf": (dict(C=10.0), lambda: make_pipeline(_shrunk_standardize(), SVC(C=10.0, gamma="scale", random_state=0))),
    "knn": (dict(n_neighbors=3), lambda: make_pipeline(
        Normalizer(), KNeighborsClassifier(3, weights="distance", metric="cosine", algorithm="brute"))),
    # adam trains in torch (tests/classifiers/test_fast_mlp.py); any other solver is scikit-learn's own fit
    "mlp": (dict(alpha=1e-3, hidden_layer_sizes=(32,), max_iter=300, head__solver="lbfgs"), lambda: make_pipeline(
        _shrunk_standardize(), MLPClassifier((32,), alpha=1e-3, early_stopping=True, max_iter=300, random_state=0,
                                             solver="lbfgs", n_iter_no_change=1))),
}


@pytest.mark.parametrize("name", sorted(DIRECT))
def test_head_predicts_like_a_direct_sklearn_fit(name, digits_arrays):
    X, y, Xt, yt = digits_arrays
    params, direct = DIRECT[name]
    ours = make_head(name, seed=0, **{k: v for k, v in params.items() if not k.startswith("head__")})
    ours = ours.set_params(**{k: v for k, v in params.items() if k.startswith("head__")}).fit(X, y)
    ref = direct().fit(X, y)
    np.testing.assert_array_equal(ours.predict(Xt), ref.predict(Xt))
    assert ours.score(Xt, yt) == ref.score(Xt, yt)


def test_logreg_head_matches_sklearn_accuracy(digits_arrays):
    X, y, Xt, yt = digits_arrays
    ours = make_head("logreg", C=0.1).fit(X, y)
    assert isinstance(ours.named_steps["head"], TorchLogisticRegression)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)).fit(X, y)
    assert abs(ours.score(Xt, yt) - ref.score(Xt, yt)) <= 0.005
    sk = make_head("logreg", solver="sklearn", C=0.1).fit(X, y)
    np.testing.assert_array_equal(sk.predict(Xt), ref.predict(Xt))


def test_unknown_head_lists_the_valid_ones():
    with pytest.raises(UserInputError) as err:
        make_head("forest")
    for name in ("svm", "svm-rbf", "logreg", "mlp", "knn"):
        assert name in str(err.value)
    assert set(available_heads()) >= {"svm", "svm-rbf", "logreg", "mlp", "knn"}


def test_grids_follow_kornblith_and_vissl():
    C = default_grid("logreg")["C"]
    assert len(C) == 12 and C[0] == pytest.approx(1e-6) and C[-1] == pytest.approx(1e5)
    full = default_grid("logreg", full=True)["C"]
    assert len(full) == 45 and np.allclose(np.diff(np.log10(full)), 11 / 44)
    assert default_grid("svm")["C"] == [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    assert list(default_grid("mlp")) == ["alpha"] and list(default_grid("knn")) == ["n_neighbors"]


def test_default_preprocessing_per_head():
    assert {h: default_preprocessing(h) for h in ("logreg", "svm", "knn", "mlp")} == {
        "logreg": "standardize", "svm": "l2", "knn": "l2", "mlp": "standardize"}
    assert [n for n, _ in make_head("svm").steps] == ["l2", "head"]
    assert [n for n, _ in make_head("svm", preprocessing="none", pca=8).steps] == ["pca", "head"]


def test_solver_and_parameters_are_checked():
    with pytest.raises(UserInputError, match="solver"):
        make_head("knn", solver="torch")
    with pytest.raises(UserInputError, match="bad parameter"):
        make_head("knn", n_trees=3)


def test_tiny_training_sets_clip_what_they_cannot_support():
    est, notes = adapt_to_data(make_head("knn", n_neighbors=20, pca=50), n_samples=4, n_features=10, n_classes=2)
    assert est.named_steps["head"].n_neighbors == 4
    assert est.named_steps["pca"].n_components == 4
    assert len(notes) == 2
    est, notes = adapt_to_data(make_head("mlp"), n_samples=10, n_features=10, n_classes=10)
    assert est.named_steps["head"].early_stopping is False and notes
    est, notes = adapt_to_data(make_head("mlp"), n_samples=1000, n_features=10, n_classes=10)
    assert est.named_steps["head"].early_stopping is True and not notes
