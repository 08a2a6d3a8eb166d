import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from transferlab.classifiers.preprocessing import PREPROCESSING, describe_preprocessing, make_preprocessing
from transferlab.util import UserInputError


def _fit(name, X, pca=None):
    return Pipeline(make_preprocessing(name, pca) or [("id", "passthrough")]).fit(X)


def test_l2_makes_every_row_unit_norm():
    X = np.random.default_rng(0).normal(size=(20, 5)) * 7
    out = _fit("l2", X).transform(X)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out, X / np.linalg.norm(X, axis=1, keepdims=True))


def test_standardize_learns_from_training_rows_only():
    rng = np.random.default_rng(1)
    train, test = rng.normal(2.0, 3.0, size=(50, 4)), rng.normal(-5.0, 1.0, size=(30, 4))
    pipe = _fit("standardize", train)
    np.testing.assert_allclose(pipe.named_steps["standardize"].mean_, train.mean(0))
    var = train.var(0)
    shrunk_sd = np.sqrt((50 * var + 10 * var.mean()) / (50 + 10))  # variance shrunk by 10 pseudo-rows
    np.testing.assert_allclose(pipe.transform(test), (test - train.mean(0)) / shrunk_sd)


def test_l2_then_standardize_in_that_order():
    X = np.random.default_rng(2).normal(size=(40, 6)) + 3
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    var = unit.var(0)
    expected = (unit - unit.mean(0)) / np.sqrt((40 * var + 10 * var.mean()) / 50)
    np.testing.assert_allclose(_fit("l2+standardize", X).transform(X), expected)


def test_none_leaves_features_alone_and_pca_reduces_dimension():
    X = np.random.default_rng(3).normal(size=(30, 8))
    assert make_preprocessing("none") == []
    out = _fit("none", X, pca=3).transform(X)
    assert out.shape == (30, 3)
    assert [name for name, _ in make_preprocessing("standardize", pca=3)] == ["standardize", "pca"]


def test_description_records_preprocessing_and_pca():
    assert [describe_preprocessing(p) for p in PREPROCESSING] == list(PREPROCESSING)
    assert describe_preprocessing("l2", 64) == "l2+pca64"
    assert describe_preprocessing("none", 16) == "pca16"


@pytest.mark.parametrize("name, pca", [("zscore", None), ("l2", 0), ("l2", 2.5), ("l2", True)])
def test_bad_preprocessing_is_a_user_error(name, pca):
    with pytest.raises(UserInputError, match="preprocessing|pca"):
        make_preprocessing(name, pca)


def test_shrunk_standardisation_is_standardscaler_on_many_rows_and_tames_near_constant_dims_on_few():
    from transferlab.classifiers.preprocessing import ShrunkStandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 8)) * np.arange(1, 9)
    np.testing.assert_allclose(ShrunkStandardScaler().fit(X).scale_, StandardScaler().fit(X).scale_, rtol=1e-2)
    np.testing.assert_allclose(ShrunkStandardScaler(prior_rows=0).fit(X[:50]).transform(X[:50]),
                               StandardScaler().fit(X[:50]).transform(X[:50]))
    few = rng.normal(size=(10, 100))
    few[:, 0] = 1e-4 * rng.normal(size=10)  # a dimension that is nearly constant on these 10 rows
    plain = np.abs(StandardScaler().fit_transform(few)[:, 0]).max()
    shrunk = np.abs(ShrunkStandardScaler().fit_transform(few)[:, 0]).max()
    assert plain > 1.0 and shrunk < 1e-3
