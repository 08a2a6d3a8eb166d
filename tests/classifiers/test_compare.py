import math

import numpy as np
import pytest

from transferlab.classifiers.compare import Gap, corrected_kfold_gap, paired_split_gap, repeated_folds


def test_paired_split_gap_is_the_mean_and_standard_error_of_per_row_differences():
    a = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 1, 0, 0, 0, 1, 1], bool)
    # by hand: d = [0, 1, 0, 0, 1, 0, 0, 0]; mean 0.25; sample variance (2*0.75^2 + 6*0.25^2)/7 = 1.5/7
    g = paired_split_gap(a, b)
    assert g.difference == pytest.approx(0.25)
    assert g.se == pytest.approx(math.sqrt(1.5 / 7 / 8))
    assert g.method == "split" and g.n == 8


def test_the_paired_error_is_far_below_the_unpaired_one_when_two_probes_mostly_agree():
    rng = np.random.default_rng(0)
    n = 400
    a = rng.random(n) < 0.85
    b = a.copy()
    flip = rng.choice(n, 12, replace=False)  # the two disagree on 12 rows only
    b[flip] = ~b[flip]
    g = paired_split_gap(a, b)
    unpaired = math.hypot(*(math.sqrt(p * (1 - p) / n) for p in (a.mean(), b.mean())))
    assert g.se < unpaired / 2


def test_two_probes_that_never_disagree_have_a_floored_not_zero_error():
    a = np.array([1, 0, 1, 1], bool)
    g = paired_split_gap(a, a)
    assert g.difference == 0 and g.se > 0 and g.in_se == 0 and not g.beats(0.0)


def test_paired_split_gap_refuses_rows_that_do_not_pair():
    with pytest.raises(ValueError):
        paired_split_gap([True, False], [True])


def test_repeated_folds_are_stratified_and_cover_every_row_once_per_repeat():
    y = np.repeat(np.arange(3), [10, 12, 8])
    splits = repeated_folds(y, folds=5, repeats=2, seed=1)
    assert len(splits) == 10
    for r in range(2):
        tests = np.concatenate([te for _, te in splits[5 * r:5 * r + 5]])
        assert np.array_equal(np.sort(tests), np.arange(y.size))
    for tr, te in splits:
        assert np.intersect1d(tr, te).size == 0
        assert set(np.unique(y[te])) == {0, 1, 2}
    assert [te.tolist() for _, te in repeated_folds(y, 5, 2, seed=1)] == [te.tolist() for _, te in splits]


def test_repeated_folds_lower_k_to_the_smallest_class_and_refuse_a_single_row_class():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    assert len(repeated_folds(y, folds=5, repeats=1)) == 3
    with pytest.raises(ValueError):
        repeated_folds(np.array([0, 0, 1]), folds=5)


def test_corrected_kfold_gap_applies_the_nadeau_bengio_correction():
    y = np.repeat(np.arange(2), 50)
    splits = repeated_folds(y, folds=5, repeats=2, seed=0)  # 10 folds of 20 test / 80 train rows
    a = np.array([.90, .85, .95, .90, .80, .90, .85, .90, .95, .85])
    b = np.array([.85, .85, .90, .80, .80, .85, .80, .90, .90, .80])
    d = a - b
    g = corrected_kfold_gap(a, b, splits)
    assert g.difference == pytest.approx(d.mean())
    assert g.se == pytest.approx(math.sqrt((1 / 10 + 20 / 80) * d.var(ddof=1)))
    assert g.se > d.std(ddof=1) / math.sqrt(10)  # wider than the naive error of the mean
    assert g.method == "kfold 2x5"


def test_gap_in_se_and_beats():
    assert Gap(0.05, 0.02, "split", 100).in_se == pytest.approx(2.5)
    assert Gap(0.05, 0.02, "split", 100).beats(2.0)
    assert not Gap(0.03, 0.02, "split", 100).beats(2.0)
    assert Gap(-0.05, 0.02, "split", 100).in_se < 0


def _two_layers(seed=0, n=240):
    """A 3-class problem seen through a clean layer and a noisy one (same rows)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centres = rng.normal(size=(3, 8))
    clean = centres[y] + 0.6 * rng.normal(size=(n, 8))
    noisy = centres[y] + 2.5 * rng.normal(size=(n, 8))
    return clean.astype(np.float32), noisy.astype(np.float32), y


def test_kfold_accuracies_equal_a_direct_fit_per_fold_at_the_chosen_c():

    from transferlab.classifiers.compare import kfold_accuracies
    from transferlab.classifiers.heads import make_head

    X, _, y = _two_layers()
    splits = repeated_folds(y, folds=4, repeats=1, seed=0)
    acc, params = kfold_accuracies(X, y, splits, "logreg", seed=0)
    assert acc.shape == (4,) and set(params) == {"C"}
    for (tr, te), a in zip(splits, acc):  # independent: the head refitted at that C on the fold's rows
        est = make_head("logreg", seed=0).set_params(head__C=params["C"]).fit(X[tr], y[tr])
        assert a == pytest.approx(np.mean(est.predict(X[te]) == y[te]), abs=1.5 / te.size)


def test_a_clean_layer_beats_a_noisy_one_by_many_corrected_errors_and_ties_itself():
    from transferlab.classifiers.compare import kfold_accuracies

    clean, noisy, y = _two_layers()
    splits = repeated_folds(y, folds=5, repeats=2, seed=0)
    a, _ = kfold_accuracies(clean, y, splits)
    b, _ = kfold_accuracies(noisy, y, splits)
    g = corrected_kfold_gap(a, b, splits)
    assert g.difference > 0.15 and g.beats(2.0)
    assert corrected_kfold_gap(a, a, splits).in_se == 0


def test_split_correctness_is_the_validation_accuracy_of_a_head_fitted_on_train_alone():
    from transferlab.classifiers.compare import split_correctness
    from transferlab.classifiers.heads import make_head

    clean, noisy, y = _two_layers(n=300)
    tr, va = np.arange(200), np.arange(200, 300)
    correct, params = split_correctness(clean[tr], y[tr], clean[va], y[va])
    est = make_head("logreg", seed=0).set_params(head__C=params["C"]).fit(clean[tr], y[tr])
    assert correct.shape == (100,)
    assert correct.mean() == pytest.approx(np.mean(est.predict(clean[va]) == y[va]), abs=0.02)
    other, _ = split_correctness(noisy[tr], y[tr], noisy[va], y[va])
    assert paired_split_gap(correct, other).beats(2.0)
