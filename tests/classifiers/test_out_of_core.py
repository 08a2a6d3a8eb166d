"""The logreg selection on rows that stay on disk: the same choice and model as in memory."""
import h5py
import numpy as np
import pytest

from transferlab.classifiers import _batched_lbfgs as lbfgs
from transferlab.classifiers._batched_lbfgs import RowBlocks
from transferlab.classifiers.out_of_core import select_logreg
from transferlab.classifiers.protocol import select_and_fit


def _classes(n, d, k, seed=0):
    """Class means plus noise, float16 as a cache stores them: a curve over C with one clear peak."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.35, (k, d))
    y = rng.integers(0, k, n)
    X = means[y] + rng.normal(0, 1.0, (n, d)) + 3.0  # off zero, like pooled activations
    return X.astype(np.float16), y


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


CS = np.logspace(-4, 1, 21)  # a quarter decade apart: the screen solves every other value


def test_row_blocks_read_the_selected_rows_standardised(tmp_path):
    X, _ = _classes(1000, 8, 3)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, 8))
    index = np.sort(np.random.default_rng(1).choice(1000, 300, replace=False))
    shift, scale = np.arange(8, dtype=np.float32), np.linspace(0.5, 2, 8, dtype=np.float32)
    expected = (X[index].astype(np.float32) - shift) * scale
    with h5py.File(tmp_path / "x.h5", "r") as f:
        blocks = RowBlocks(f["X"], index, lambda rows: (rows - shift) * scale, block_rows=100)
        assert blocks.shape == (300, 8) and blocks.block_rows == 64  # whole HDF5 chunks
        np.testing.assert_array_equal(blocks[0:300], expected)
        np.testing.assert_array_equal(blocks[17:211], expected[17:211])
        np.testing.assert_array_equal(blocks.take([0, 5, 299]), expected[[0, 5, 299]])
        with pytest.raises(TypeError):
            blocks[np.arange(3)]
        with pytest.raises(ValueError, match="sorted"):
            RowBlocks(f["X"], index[::-1])


def test_select_logreg_in_memory_is_select_and_fit():
    """select_logreg runs the protocol's selection: the same holdout, standardiser, choice and refit
    (in full precision: bfloat16 rounding of rows a float apart could flip a choice within noise)."""
    X, y = _classes(3000, 32, 5)
    X = X.astype(np.float32)
    mine = select_logreg(X, y, CS, precision="exact")
    theirs = select_and_fit(X, y, None, None, None, None, "logreg", grid=list(CS), head_params={"precision": "exact"})
    assert mine.C == theirs.params["C"]
    assert (mine.n_train, mine.n_val) == (theirs.n_train, theirs.n_val)
    theirs_scores = [np.nan if s["val_accuracy"] is None else s["val_accuracy"] for s in theirs.val_scores]
    np.testing.assert_allclose(mine.scores, theirs_scores, atol=1.01 / mine.n_val)
    a, b = mine.estimator.named_steps, theirs.estimator.named_steps
    np.testing.assert_allclose(a["standardize"].mean_, b["standardize"].mean_, rtol=1e-6)
    np.testing.assert_allclose(a["standardize"].scale_, b["standardize"].scale_, rtol=1e-6)
    assert _rel(a["head"].coef_, b["head"].coef_) < 1e-3


def test_out_of_core_selection_equals_the_in_memory_one(tmp_path, monkeypatch):
    """20,000 rows in an HDF5 file, streamed at every pass (a 2 MB budget), against the same rows held
    in memory: the same holdout and standardisers, the same chosen C, the model to solver tolerance."""
    X, y = _classes(20_000, 48, 20)
    with h5py.File(tmp_path / "cache.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(512, 48))
    in_memory = select_logreg(X, y, CS)
    streamed = []
    original = lbfgs.RowSource.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        streamed.append((self.n, self.streamed))

    monkeypatch.setattr(lbfgs.RowSource, "__init__", spy)
    with h5py.File(tmp_path / "cache.h5", "r") as f:
        on_disk = select_logreg(f["X"], y, CS, memory_budget=2 << 20)
    # the screen's 8,192-row subsample fits the budget; the refine (16,000 rows) and refit (20,000) stream
    assert (8192, False) in streamed and (16_000, True) in streamed and (20_000, True) in streamed
    assert on_disk.C == in_memory.C
    assert on_disk.C not in (CS[0], CS[-1])  # a peak inside the grid, so the choice means something
    np.testing.assert_allclose(on_disk.scores, in_memory.scores, atol=2.01 / in_memory.n_val)
    a, b = on_disk.estimator.named_steps, in_memory.estimator.named_steps
    np.testing.assert_allclose(a["standardize"].mean_, b["standardize"].mean_, rtol=1e-6)
    np.testing.assert_allclose(a["standardize"].scale_, b["standardize"].scale_, rtol=1e-6)
    assert _rel(a["head"].coef_, b["head"].coef_) < 1e-2
    assert np.mean(on_disk.estimator.predict(X) == in_memory.estimator.predict(X)) >= 0.995


def test_select_logreg_needs_validation_rows():
    from transferlab.util import UserInputError

    X, y = _classes(10, 4, 10)
    with pytest.raises(UserInputError, match="no validation rows"):
        select_logreg(X, np.arange(10), CS)


def test_rows_streamed_from_an_array_leave_it_as_it_was():
    """A float32 array beyond the memory budget is streamed through the pass's own buffer: the bfloat16
    passes centre each chunk in place, in that buffer, never in the caller's rows; and the fit is the one
    on the same rows held in memory."""
    from transferlab.classifiers.fast_logreg import TorchLogisticRegression

    X, y = _classes(6000, 32, 5)
    X = X.astype(np.float32)  # off-centre, as _classes makes them: centring in place would move every entry
    before = X.copy()
    streamed = TorchLogisticRegression(C=0.1, precision="mixed", memory_budget=256 << 10).fit(X, y)
    np.testing.assert_array_equal(X, before)
    held = TorchLogisticRegression(C=0.1, precision="mixed").fit(X, y)
    assert _rel(streamed.coef_, held.coef_) < 1e-2
