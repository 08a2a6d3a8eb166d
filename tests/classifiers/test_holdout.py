import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from transferlab.classifiers.fast_logreg import BatchedLogisticRegressionCV
from transferlab.classifiers.holdout import stratified_holdout, stratified_sample
from transferlab.classifiers.protocol import select_and_fit
from transferlab.features.data import Dataset, Split
from transferlab.util import UserInputError

# a class of one row (it cannot be on both sides), and 50 rows: 0.25 of them is 12.5, where rounding
# and the ceiling of the rule part ways
COUNTS = [1, 5, 9, 14, 21]


def _labelled(counts=COUNTS, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    X = (rng.normal(size=(y.size, 8)) + y[:, None]).astype(np.float32)
    return X, y


def _dataset(y) -> Dataset:
    """In-memory images whose first two pixels spell the row number, so rows can be told apart."""
    images = np.zeros((y.size, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = np.arange(y.size) % 256, np.arange(y.size) // 256
    test = Split("test", y[:6], images=images[:6])
    return Dataset("rows", {"train": Split("train", y, images=images), "test": test}, list("abcde"), "fp")


def _rows_of(split_data) -> np.ndarray:
    images = split_data.images.numpy().astype(int)  # (N, 3, H, W)
    return images[:, 0, 0, 0] + 256 * images[:, 0, 0, 1]


def test_the_heads_the_cv_estimator_fine_tuning_and_advise_hold_out_the_same_rows():
    from transferlab.finetuning.run import finetune_splits
    from transferlab.pipeline.advise import advice_subset

    X, y = _labelled()
    fraction, seed = 0.25, 3
    tr, va, reason = stratified_holdout(y, fraction, seed)
    assert reason is None and va.size == 13  # ceil(0.25 * 49): the single row of class 0 stays in train

    # heads: selecting on the holdout of X is selecting on the given rows va
    held = select_and_fit(X, y, None, None, None, None, "ridge", val_fraction=fraction, seed=seed)
    given = select_and_fit(X[tr], y[tr], X[va], y[va], None, None, "ridge", seed=seed)
    assert held.val_scores == given.val_scores and (held.n_train, held.n_val) == (tr.size, va.size)
    assert held.selection.startswith("train fraction 0.25")

    # the CV estimator: the same path fitted on the same rows, scored on the same rows
    Cs = [1e-3, 1e-1, 10.0]
    own = BatchedLogisticRegressionCV(Cs=Cs, val_fraction=fraction, random_state=seed, refit=False).fit(X, y)
    on_va = BatchedLogisticRegressionCV(Cs=Cs, refit=False).fit(X[tr], y[tr], X[va], y[va])
    np.testing.assert_array_equal(own.scores_, on_va.scores_)
    np.testing.assert_array_equal(own.coef_, on_va.coef_)
    assert own.selection_.startswith("held-out fraction 0.25")

    # fine-tuning
    ds = _dataset(y)
    train, val, test, source = finetune_splits(ds, fraction, None, seed)
    np.testing.assert_array_equal(_rows_of(val), va)
    np.testing.assert_array_equal(_rows_of(train), tr)
    np.testing.assert_array_equal(val.labels, y[va])
    assert len(test) == 6 and "stratified, seed 3" in source

    # advise (caps above the row counts), whose splits keep the rows' sample ids
    sub = advice_subset(ds, 10_000, 10_000, fraction, seed)
    np.testing.assert_array_equal(sub.splits["val"].ids, va)
    np.testing.assert_array_equal(sub.splits["train"].ids, tr)
    np.testing.assert_array_equal(sub.splits["val"].images, ds.splits["train"].images[va])
    assert sub.splits["val"].name == "val" and sub.splits["train"].name == "train"


def test_a_class_too_small_to_stratify_stays_in_train_and_the_rest_is_split_by_class():
    _, y = _labelled()
    tr, va, reason = stratified_holdout(y, 0.25, seed=0)
    assert reason is None
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(y.size)) and not np.intersect1d(tr, va).size
    assert np.array_equal(tr, np.sort(tr)) and np.array_equal(va, np.sort(va))
    per_class = np.bincount(y[va], minlength=5)
    assert per_class[0] == 0 and np.all(np.bincount(y[tr], minlength=5) >= 1)  # every class keeps a training row
    assert np.all(np.abs(per_class[1:] - 0.25 * np.array(COUNTS[1:])) <= 1)  # stratified
    # the rows of the other classes are exactly scikit-learn's stratified split of those rows
    rows = np.flatnonzero(y != 0)
    _, expected = train_test_split(rows, test_size=13, stratify=y[rows], random_state=0)
    np.testing.assert_array_equal(va, np.sort(expected))


def test_without_small_classes_the_holdout_is_scikit_learns_stratified_split():
    y = np.random.default_rng(1).integers(0, 4, 203)
    tr, va, _ = stratified_holdout(y, 0.2, seed=7)
    ref_tr, ref_va = train_test_split(np.arange(y.size), test_size=0.2, stratify=y, random_state=7)
    np.testing.assert_array_equal(tr, np.sort(ref_tr))
    np.testing.assert_array_equal(va, np.sort(ref_va))
    # the same rows for the labels and for their codes, and again for the same seed
    names = np.array(["cat", "dog", "eel", "fox"])[y]
    np.testing.assert_array_equal(stratified_holdout(names, 0.2, seed=7)[1], va)
    np.testing.assert_array_equal(stratified_holdout(y, 0.2, seed=7)[1], va)
    assert not np.array_equal(stratified_holdout(y, 0.2, seed=8)[1], va)


def test_no_holdout_when_no_class_can_be_split_or_the_rows_cannot_hold_one():
    assert stratified_holdout(np.arange(10), 0.2)[2] == "every class has a single training example"
    assert stratified_holdout(np.arange(9) % 3, 0.2)[:2] == (None, None)  # 2 rows held out, 3 classes
    assert "cannot hold a stratified 0.2" in stratified_holdout(np.arange(9) % 3, 0.2)[2]
    with pytest.raises(UserInputError, match="val_fraction"):
        stratified_holdout(np.arange(10) % 2, 1.0)


def test_one_example_in_one_class_still_selects_on_the_others():
    X, y = _labelled([1, 30, 30])
    result = select_and_fit(X, y, None, None, X, y, "ridge", seed=0)
    assert result.selection.startswith("train fraction 0.2") and result.val_accuracy is not None
    assert result.n_val == 12 and result.n_train == y.size - 12
    assert set(result.estimator.named_steps["head"].classes_) == {0, 1, 2}


def test_fine_tuning_refuses_a_holdout_that_cannot_be_stratified():
    from transferlab.finetuning.run import finetune_splits

    with pytest.raises(UserInputError, match="--val-fraction 0"):
        finetune_splits(_dataset(np.arange(9) % 3), 0.2, None, 0)
    train, val, _, source = finetune_splits(_dataset(np.arange(9) % 3), 0.0, None, 0)
    assert val is None and source == "none" and len(train) == 9


def test_a_stratified_sample_is_the_held_out_side_of_a_stratified_split_and_all_rows_past_the_size():
    y = np.random.default_rng(2).integers(0, 3, 100)
    _, ref = train_test_split(np.arange(100), test_size=30, stratify=y, random_state=5)
    np.testing.assert_array_equal(stratified_sample(y, 30, 5), np.sort(ref))
    np.testing.assert_array_equal(stratified_sample(y, 100, 5), np.arange(100))
    # fewer rows than classes: scikit-learn cannot stratify, a plain seeded draw
    _, plain = train_test_split(np.arange(100), test_size=2, random_state=5)
    np.testing.assert_array_equal(stratified_sample(y, 2, 5), np.sort(plain))


def test_split_take_keeps_rows_ids_and_files_in_order(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(5)]
    split = Split("train", [0, 1, 0, 1, 1], paths=paths, ids=np.array([10, 11, 12, 13, 14]))
    part = split.take([3, 0], "val")
    assert part.name == "val" and part.paths == [paths[3], paths[0]]
    assert part.labels.tolist() == [1, 0] and part.ids.tolist() == [13, 10] and not part.in_memory
    images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    kept = Split("train", [0, 1, 0, 1, 1], images=images).take(np.array([4, 1]))
    assert kept.name == "train" and kept.ids.tolist() == [4, 1]
    np.testing.assert_array_equal(kept.images, images[[4, 1]])


def test_validation_source_is_the_val_split_else_the_holdout_else_none():
    """The one rule of where validation rows come from (heads, sweep, fine-tuning, advise)."""
    from transferlab.classifiers.holdout import validation_source

    y = np.repeat([0, 1, 2], 10)
    tr, va, source, reason = validation_source(y, 7, 0.2, seed=3)
    assert (tr.tolist(), va.tolist(), source, reason) == (list(range(30)), list(range(7)), "val split", None)
    tr, va, source, reason = validation_source(y, 0, 0.2, seed=3)
    h_tr, h_va, _ = stratified_holdout(y, 0.2, 3)
    assert (tr.tolist(), va.tolist()) == (h_tr.tolist(), h_va.tolist()) and len(va) == 6
    assert (source, reason) == ("0.2 of train (stratified, seed 3)", None)
    tr, va, source, reason = validation_source(np.arange(5), 0, 0.2)  # one row per class: nothing to hold out
    assert va is None and source == "none" and reason and tr.tolist() == list(range(5))
