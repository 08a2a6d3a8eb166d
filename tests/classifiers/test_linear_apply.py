"""A linear head loaded ``as_numpy`` gives bit for bit the scores, labels and probabilities of the estimator it
was saved from (computed by scikit-learn and the project's estimators on the same rows); other heads load as
before."""
import numpy as np
import pytest

from transferlab.classifiers.heads import make_head
from transferlab.classifiers.linear_apply import LinearHead, LogisticHead
from transferlab.classifiers.multilayer import MultiLayerLogisticRegression
from transferlab.classifiers.persistence import load_head, save_head

LINEAR = [("logreg", {}), ("logreg", {"preprocessing": "none"}), ("logreg", {"preprocessing": "l2+standardize"}),
          ("svm", {}), ("svm", {"preprocessing": "standardize"}), ("ridge", {}), ("svm", {"solver": "sklearn"})]
OTHERS = [("knn", {}), ("mlp", {"max_iter": 30}), ("logreg", {"solver": "sklearn"}),
          ("logreg", {"preprocessing": "standardize", "pca": 8})]


def _rows(digits_arrays):
    """Digits features moved off zero mean and unit scale, so the standardisation's rounding shows."""
    X, y, Xt, _ = digits_arrays
    return (X * 3 + 1).astype(np.float32), y, (Xt * 3 + 1).astype(np.float32)


def _same_outputs(numpy_head, est, Xt):
    for method in ("decision_function", "predict", "predict_proba"):
        if hasattr(est, method):
            want, got = getattr(est, method)(Xt), getattr(numpy_head, method)(Xt)
            assert got.dtype == want.dtype and got.shape == want.shape, method
            np.testing.assert_array_equal(got, want, err_msg=method)
        else:
            assert not hasattr(numpy_head, method), method


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("classes", [10, 2])
@pytest.mark.parametrize("name,kw", LINEAR, ids=[f"{n}-{'-'.join(map(str, kw.values())) or 'default'}"
                                                 for n, kw in LINEAR])
def test_a_linear_head_as_numpy_scores_bit_for_bit_as_its_estimator(tmp_path, digits_arrays, name, kw, classes):
    X, y, Xt = _rows(digits_arrays)
    keep = y < classes
    est = make_head(name, **kw).fit(X[keep], y[keep])
    save_head(tmp_path / "h", est, {"layer": "blocks.3"})
    head, _ = load_head(tmp_path / "h", as_numpy=True)
    assert isinstance(head, LinearHead) and head.n_features_in_ == X.shape[1]
    assert isinstance(head, LogisticHead) == (name == "logreg")
    _same_outputs(head, est, Xt)
    if classes == 2:  # one score per row; probabilities in two columns
        assert head.decision_function(Xt).shape == (len(Xt),)
        if name == "logreg":
            assert head.predict_proba(Xt).shape == (len(Xt), 2)
    assert set(head.predict(Xt)) <= set(range(classes))
    with pytest.raises(ValueError):  # as the estimators refuse them
        head.predict(np.full((1, X.shape[1]), np.nan, np.float32))
    with pytest.raises(ValueError):
        head.predict(Xt[:, :10])


@pytest.mark.parametrize("classes", [10, 2])
def test_the_multi_layer_head_as_numpy_scores_bit_for_bit(tmp_path, digits_arrays, classes):
    X, y, Xt = _rows(digits_arrays)
    keep = y < classes
    est = MultiLayerLogisticRegression([16, 48], ["a", "b"], Cs=[0.1, 10.0], selection="all").fit(X[keep], y[keep])
    est = est.restricted()
    save_head(tmp_path / "h", est, {"layer": "a+b", "layers": ["a", "b"]})
    head, _ = load_head(tmp_path / "h", as_numpy=True)
    assert isinstance(head, LogisticHead)
    _same_outputs(head, est, Xt)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("name,kw", OTHERS, ids=[f"{n}-{'-'.join(map(str, kw.values())) or 'default'}"
                                                 for n, kw in OTHERS])
def test_a_head_that_is_not_repeated_in_numpy_loads_as_its_estimator(tmp_path, digits_arrays, name, kw):
    X, y, Xt = _rows(digits_arrays)
    est = make_head(name, **kw).fit(X, y)
    save_head(tmp_path / "h", est, {"layer": "blocks.3"})
    head, _ = load_head(tmp_path / "h", as_numpy=True)
    assert type(head) is type(est)
    np.testing.assert_array_equal(head.predict(Xt), est.predict(Xt))
