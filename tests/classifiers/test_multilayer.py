"""The multi-layer head: per-layer scaling, selection on validation only, safe save/load, scikit-learn's contract."""
import pickle

import joblib
import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from tests.cache_fixtures import digits_splits, write_cache
from transferlab.classifiers.multilayer import (
    DEFAULT_CS,
    MultiLayerLogisticRegression,
    block_scaling,
    c_window,
    paired_gain_test,
)
from transferlab.classifiers.persistence import load_head
from transferlab.classifiers.train import train_multilayer
from transferlab.features.cache import load_split
from transferlab.util import UserInputError

CS = [0.01, 1.0, 100.0]


@parametrize_with_checks([MultiLayerLogisticRegression(Cs=CS), MultiLayerLogisticRegression(Cs=CS, selection="all")])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _blocks(n=300, seed=0):
    """Three blocks of very different widths and scales; block 0 carries the label, the others noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    signal = rng.normal(size=(n, 4)) + np.eye(3, 4)[y] * 3.0
    narrow = 50.0 * rng.normal(size=(n, 2)) + 7.0
    wide = 0.01 * rng.normal(size=(n, 200)) * rng.uniform(0.1, 10, 200)
    return np.concatenate([signal, narrow, wide], 1), y, [4, 2, 200]


def test_each_block_is_standardised_then_scaled_to_equal_total_variance_as_numpy_computes_it():
    X, y, dims = _blocks()
    est = MultiLayerLogisticRegression(dims, ["a", "b", "c"], Cs=CS, selection="all").fit(X, y)
    # numpy: the shrunk standardisation, then each block's total variance set to the mean width
    n, k = X.shape[0], 10.0
    var = X.var(0)
    scale = np.sqrt((n * var + k * var.mean()) / (n + k))
    Z = (X - X.mean(0)) / scale
    bounds = np.cumsum([0, *dims])
    for a, b in zip(bounds[:-1], bounds[1:]):
        Z[:, a:b] *= np.sqrt(np.mean(dims) / Z[:, a:b].var(0).sum())
    np.testing.assert_allclose(est.scale_blocks(X), Z, rtol=1e-6, atol=1e-9)
    totals = [Z[:, a:b].var(0).sum() for a, b in zip(bounds[:-1], bounds[1:])]
    np.testing.assert_allclose(totals, [np.mean(dims)] * 3, rtol=1e-9)  # equal, whatever the widths
    mean, scale_, weight = block_scaling(X, dims)
    np.testing.assert_allclose(weight, est.block_weight_)


def test_greedy_selection_takes_the_informative_layer_and_leaves_noise_out():
    X, y, dims = _blocks(600)
    est = MultiLayerLogisticRegression(dims, ["signal", "narrow", "wide"], Cs=CS).fit(X[:400], y[:400], X[400:],
                                                                                       y[400:])
    assert est.layers_ == ["signal"] and est.selected_.tolist() == [0]
    assert np.all(est.coef_[:, 4:] == 0) and np.any(est.coef_[:, :4] != 0)
    assert est.selection_path_[0]["layers"] == ["signal"] and est.val_accuracy_ == est.selection_path_[-1][
        "val_accuracy"]
    assert est.score(X[400:], y[400:]) > 0.85


def _two_informative(n, seed, which):
    """Blocks a and b; the label is readable from block ``which`` (the other holds noise)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    a, b = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
    {"a": a, "b": b}[which][:, 0] += 3.0 * (2 * y - 1)
    return np.concatenate([a, b], 1), y


def test_the_layers_are_chosen_on_the_validation_rows_given():
    X_both, y = _two_informative(400, 0, "a")
    X_both[:, 5] += 3.0 * (2 * y - 1)  # training rows: both blocks informative, a a little less noisy
    X_both[:, 0] += 0.5 * (2 * y - 1)
    chosen = {}
    for which in ("a", "b"):
        X_val, y_val = _two_informative(200, 1, which)
        est = MultiLayerLogisticRegression([5, 5], ["a", "b"], Cs=CS, max_layers=1).fit(X_both, y, X_val, y_val)
        chosen[which] = est.layers_
    assert chosen == {"a": ["a"], "b": ["b"]}


def test_greedy_path_rises_strictly_and_respects_max_layers():
    rng = np.random.default_rng(3)
    n = 600
    y = np.arange(n) % 4
    # each block tells two of the four classes apart: together they tell all four
    blocks = [rng.normal(size=(n, 3)) + 2.5 * np.column_stack([y % 2, y // 2, np.zeros(n)])[:, [i, 2, 2]]
              for i in (0, 1)]
    X = np.concatenate(blocks + [rng.normal(size=(n, 30))], 1)
    est = MultiLayerLogisticRegression([3, 3, 30], ["x", "y", "noise"], Cs=CS).fit(X[:400], y[:400], X[400:],
                                                                                    y[400:])
    accs = [s["val_accuracy"] for s in est.selection_path_]
    assert all(b > a for a, b in zip(accs, accs[1:]))
    assert sorted(est.layers_) == ["x", "y"]  # a real gain is taken by the noise-aware stop (the default)
    second = est.selection_path_[1]
    assert second["gained"] - second["lost"] > 20 and second["p_value"] < 1e-6
    assert est.refused_step_["layers"][-1] == "noise" and est.refused_step_["p_value"] >= 0.05
    one = MultiLayerLogisticRegression([3, 3, 30], ["x", "y", "noise"], Cs=CS, max_layers=1).fit(
        X[:400], y[:400], X[400:], y[400:])
    assert len(one.layers_) == 1 and one.val_accuracy_ == accs[0]


def test_the_stop_statistic_is_the_exact_one_sided_mcnemar_test_by_hand():
    before = np.array([1] * 10 + [0] * 5 + [1] + [0] * 4, bool)  # 10 agree right, 4 agree wrong
    after = np.array([1] * 10 + [1] * 5 + [0] + [0] * 4, bool)  # 5 rows gained, 1 lost
    # P(Binomial(6, 1/2) >= 5) = (C(6,5) + C(6,6)) / 2**6
    assert paired_gain_test(before, after) == {"gained": 5, "lost": 1, "p_value": pytest.approx(7 / 64)}
    assert paired_gain_test(after, before) == {"gained": 1, "lost": 5, "p_value": pytest.approx(63 / 64)}
    assert paired_gain_test([0, 1], [1, 1])["p_value"] == pytest.approx(0.5)  # one row gained: a coin's toss
    assert paired_gain_test([0, 1], [0, 1])["p_value"] == 1.0  # nothing changed
    with pytest.raises(ValueError, match="paired rows differ"):
        paired_gain_test([0, 1], [0, 1, 1])


def _signal_and_noise(seed):
    """Block 'signal' carries the label (weakly), block 'noise' nothing; 200 training, 60 validation rows."""
    rng = np.random.default_rng(seed)
    y = np.arange(260) % 2
    signal, noise = rng.normal(size=(260, 3)), rng.normal(size=(260, 3))
    signal[:, 0] += 1.2 * (2 * y - 1)
    X = np.concatenate([signal, noise], 1)
    return X[:200], y[:200], X[200:], y[200:]


@pytest.mark.parametrize("seed", [3, 7])
def test_a_noise_layer_that_wins_one_validation_row_is_refused_where_the_rise_rule_took_it(seed):
    data = _signal_and_noise(seed)
    rise = MultiLayerLogisticRegression([3, 3], ["signal", "noise"], Cs=CS, stop="rise").fit(*data)
    assert rise.layers_ == ["signal", "noise"]  # the earlier rule: one row more on validation is enough
    step = rise.selection_path_[1]
    assert (step["gained"], step["lost"]) == (1, 0) and step["val_accuracy"] - rise.selection_path_[0][
        "val_accuracy"] == pytest.approx(1 / 60)
    new = MultiLayerLogisticRegression([3, 3], ["signal", "noise"], Cs=CS).fit(*data)
    assert new.layers_ == ["signal"] and new.selected_.tolist() == [0]
    assert new.refused_step_ == {**step, "p_value": pytest.approx(0.5)}  # the same step, P(Bin(1, 1/2) >= 1)
    assert np.all(new.coef_[:, 3:] == 0)


def test_the_stop_takes_a_step_exactly_when_its_p_value_is_below_alpha(monkeypatch):
    """With no row lost, 5 rows gained (p = 1/32) is taken at alpha 0.05 and 4 (p = 1/16) is not; alpha moves it."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.arange(60) % 2
    X_val, y_val = rng.normal(size=(100, 4)), np.arange(100) % 2

    for gained, alpha, taken in [(5, 0.05, True), (4, 0.05, False), (4, 0.07, True), (5, 0.03, False)]:
        def score(Z_tr, y_tr, Z_val, val_idx, cols, Cs):  # block a: 80 rows right; a + b: `gained` more
            correct = np.arange(100) < (80 if cols.size == 2 and cols[0] == 0 else 80 + gained)
            if cols.size == 2 and cols[0] == 2:  # block b alone: worse
                correct = np.arange(100) < 50
            return float(correct.mean()), 1.0, correct

        est = MultiLayerLogisticRegression([2, 2], ["a", "b"], Cs=CS, alpha=alpha)
        monkeypatch.setattr(est, "_score", score)
        est.fit(X, y, X_val, y_val)
        assert est.layers_ == (["a", "b"] if taken else ["a"]), (gained, alpha)
        last = est.selection_path_[-1] if taken else est.refused_step_
        assert last["p_value"] == pytest.approx(0.5 ** gained)


def test_restricted_head_predicts_exactly_as_the_full_one_from_its_layers_alone():
    X, y, dims = _blocks(600)
    X = np.concatenate([X, X[:, :4] * 0.5 + 1], 1)
    dims = dims + [4]
    est = MultiLayerLogisticRegression(dims, ["a", "b", "c", "d"], Cs=CS).fit(X[:400], y[:400], X[400:], y[400:])
    small = est.restricted()
    cols = np.concatenate([np.arange(s, s + d) for s, d, i in zip(np.cumsum([0, *dims]), dims, range(4))
                           if i in est.selected_])
    assert small.layer_names == sorted(est.layers_, key=["a", "b", "c", "d"].index)
    assert small.n_features_in_ == cols.size
    np.testing.assert_allclose(small.decision_function(X[:, cols]), est.decision_function(X), rtol=1e-12)
    np.testing.assert_array_equal(small.predict(X[:, cols]), est.predict(X))


def test_later_steps_search_c_near_the_last_and_follow_a_peak_outside_the_window(monkeypatch):
    """After the first step C is searched within two decades of the previous step's; a best C at the
    window's edge widens the search on that side until the peak lies inside (or at the grid's end)."""
    assert list(c_window(DEFAULT_CS, 1e-2)) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert list(c_window(DEFAULT_CS, 1e-6)) == pytest.approx([1e-6, 1e-5, 1e-4])
    m = MultiLayerLogisticRegression()
    for peak in (1e3, 1e5, 1e-6, 1e-3):
        seen = []

        def score(Z_tr, y_tr, Z_val, val_idx, cols, Cs):  # validation accuracy unimodal in log C, peak at `peak`
            seen.append(list(Cs))
            acc = [1 - abs(np.log10(c) - np.log10(peak)) / 100 for c in Cs]
            return max(acc), float(Cs[int(np.argmax(acc))]), None

        monkeypatch.setattr(m, "_score", score)
        acc, C, _ = m._score_near(None, None, None, None, None, np.asarray(DEFAULT_CS), c_window(DEFAULT_CS, 1e-2))
        assert C == pytest.approx(peak) and acc == pytest.approx(1.0), (peak, seen)
        flat = [c for batch in seen for c in batch]
        assert len(flat) == len(set(flat)), seen  # never a C twice


def test_bad_layer_dims_are_errors():
    X, y, _ = _blocks(60)
    with pytest.raises(ValueError, match="do not add up"):
        MultiLayerLogisticRegression([4, 2], Cs=CS).fit(X, y)
    with pytest.raises(ValueError, match="layer_names"):
        MultiLayerLogisticRegression([4, 2, 200], ["a"], Cs=CS).fit(X, y)
    with pytest.raises(ValueError, match="stop must be one of"):
        MultiLayerLogisticRegression([4, 2, 200], Cs=CS, stop="strict").fit(X, y)
    with pytest.raises(ValueError, match="alpha must be between 0 and 1"):
        MultiLayerLogisticRegression([4, 2, 200], Cs=CS, alpha=1.5).fit(X, y)


# --- off the cache ----------------------------------------------------------------------------------


def _no_unpickling(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the load path unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(joblib, "load", boom)


def _features(path, split, layers):
    parts = [load_split(path, split, layer) for layer in layers]
    return np.concatenate([p[0] for p in parts], 1), parts[0][1]


def test_train_multilayer_saves_a_head_that_loads_without_pickle_and_predicts_the_same(cache_with_val, tmp_path,
                                                                                     monkeypatch):
    row = train_multilayer(cache_with_val, out=tmp_path / "multi", grid=CS)
    assert row["head"] == "multi" and row["layers"] and row["layer"] == "+".join(row["layers"])
    assert row["candidates"] == ["stem", "blocks.3", "conv_head"]  # depth order
    assert row["params"]["layers"] == row["layers"] and row["params"]["C"] in CS
    assert row["n_val"] == 200 and row["n_train"] == 500 and row["n_test"] == 400
    _no_unpickling(monkeypatch)
    head, meta = load_head(tmp_path / "multi")
    monkeypatch.undo()
    assert meta["layers"] == row["layers"] and meta["params"]["layers"] == row["layers"]
    assert head.layer_names == row["layers"]
    X_te, y_te = _features(cache_with_val, "test", row["layers"])
    assert np.mean(head.predict(X_te) == y_te) == pytest.approx(row["test_accuracy"])
    # the same model refitted here predicts what the saved one does, to the last bit
    X_tr, y_tr = _features(cache_with_val, "train", row["candidates"])
    X_va, y_va = _features(cache_with_val, "val", row["candidates"])
    dims = [load_split(cache_with_val, "train", n)[0].shape[1] for n in row["candidates"]]
    fresh = MultiLayerLogisticRegression(dims, row["candidates"], Cs=tuple(CS)).fit(X_tr, y_tr, X_va, y_va)
    np.testing.assert_array_equal(head.predict_proba(X_te), fresh.restricted().predict_proba(X_te))


def test_each_greedy_step_after_the_first_keeps_the_stops_paired_test_in_its_row(cache_with_val):
    row = train_multilayer(cache_with_val, grid=CS, head_params={"stop": "rise"})
    first, *later = row["val_scores"]
    assert later, row["val_scores"]  # 'rise' takes a second layer here
    assert "p_value" not in first and all({"gained", "lost", "p_value"} <= set(s) for s in later)
    for before, after in zip(row["val_scores"], later):  # gained - lost rows is the step's rise on 200 rows
        assert (after["gained"] - after["lost"]) / 200 == pytest.approx(after["val_accuracy"] - before["val_accuracy"])


def test_the_choice_never_reads_the_test_rows(tmp_path):
    labels, features = digits_splits(with_val=True)
    a = write_cache(tmp_path / "a.h5", labels, features)
    rng = np.random.default_rng(0)
    labels["test"] = rng.permutation(labels["test"])  # another test split: labels shuffled, features noise
    features["test"] = {k: rng.normal(size=v.shape) for k, v in features["test"].items()}
    b = write_cache(tmp_path / "b.h5", labels, features)
    ra, rb = (train_multilayer(p, out=tmp_path / p.stem, grid=CS) for p in (a, b))
    for key in ("layers", "params", "val_accuracy", "val_scores", "selection"):
        assert ra[key] == rb[key], key
    ha, _ = load_head(tmp_path / "a")
    hb, _ = load_head(tmp_path / "b")
    np.testing.assert_array_equal(ha.coef_, hb.coef_)
    assert ra["test_accuracy"] > 0.8 and rb["test_accuracy"] < 0.3


def test_low_shot_without_val_selects_on_the_rows_not_drawn(cache_no_val):
    row = train_multilayer(cache_no_val, grid=CS, shots=5)
    assert row["n_train"] == 50 and row["n_val"] == 450 and row["val_accuracy"] is not None


def test_unknown_layer_is_a_user_error(cache_with_val):
    with pytest.raises(UserInputError, match="valid layers"):
        train_multilayer(cache_with_val, layers=["stem", "nope"], grid=CS)
