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


def _file(tmp_path, X, chunk_rows):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(chunk_rows, X.shape[1]))
    return h5py.File(tmp_path / "x.h5", "r")


def test_row_blocks_read_rows_across_blocks_in_any_order(tmp_path):
    """The block a file read is kept for the next request: requests before it, after it, within it and
    across several blocks all get their own rows, and a result handed out stays as it was."""
    X, _ = _classes(2000, 16, 3)
    index = np.sort(np.random.default_rng(2).choice(2000, 1500, replace=False))
    expected = X[index].astype(np.float32)
    with _file(tmp_path, X, 32) as f:
        blocks = RowBlocks(f["X"], index, block_rows=96)
        first = blocks[700:900]
        kept = first.copy()
        for a, b in ((1400, 1500), (0, 40), (10, 1500), (650, 651), (300, 1000), (0, 0)):
            np.testing.assert_array_equal(blocks[a:b], expected[a:b])
        picks = np.array([0, 1, 2, 900, 1499])
        np.testing.assert_array_equal(blocks.take(picks), expected[picks])
        out = np.full((300, 16), np.nan, dtype=np.float32)
        np.testing.assert_array_equal(blocks.read_into(1200, 1500, out), expected[1200:1500])
        np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("low", [False, True])
def test_a_streamed_pass_is_the_held_pass_bit_for_bit(tmp_path, monkeypatch, low):
    """Streamed rows (a file's training rows, standardised as they are read) pass in the same chunks as the
    same rows held in memory, with the same values, in float32 and centred in bfloat16: loss and gradient
    are the in-memory ones exactly, pass after pass (the chunk buffers are reused, never stale)."""
    import torch

    monkeypatch.setattr(lbfgs, "CPU_CHUNK_BYTES", 300 * 24 * 4)  # chunks of 300 rows: 7 per pass
    X, y = _classes(2500, 24, 4)
    index = np.flatnonzero(np.random.default_rng(3).random(2500) < 0.8)
    shift, scale = np.linspace(2, 4, 24, dtype=np.float32), np.linspace(0.5, 2, 24, dtype=np.float32)

    def standardise(rows):
        return torch.from_numpy(rows).sub_(torch.from_numpy(shift)).div_(torch.from_numpy(scale)).numpy()

    with _file(tmp_path, X, 64) as f:
        rows = RowBlocks(f["X"], index, standardise, block_rows=256)  # blocks smaller than a chunk of a pass
        held = lbfgs.RowSource(rows, "cpu", 1 << 30, torch.float32)
        streamed = lbfgs.RowSource(rows, "cpu", 400 * 24 * 4, torch.float32)
        assert not held.streamed and streamed.streamed and streamed.pass_rows == held.rows == 300
        center = held._full.mean(0) if low else None
        held.low_center = streamed.low_center = center
        expected = [(a, b, c.clone()) for a, b, c in held.chunks()]
        assert len(expected) == 7 and expected[0][2].dtype == (torch.bfloat16 if low else torch.float32)
        for _ in range(2):
            got = list((a, b, c.clone()) for a, b, c in streamed.chunks())
            assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in expected]
            for (_, _, g), (_, _, e) in zip(got, expected):
                assert torch.equal(g, e)
        y_idx = torch.as_tensor(y[index])
        x = torch.randn(2, 25 * 4, generator=torch.Generator().manual_seed(0)) * 0.1
        C = torch.tensor([0.1, 1.0])
        mu = held._full.mean(0)
        results = [lbfgs.Problem(s, y_idx, 4, mu, None, None).evaluate(x, C) for s in (held, streamed)]
        for a, b in zip(*results):
            assert torch.equal(a, b)


def test_streamed_rows_are_checked_for_nan_without_false_alarms(tmp_path):
    """A NaN in a streamed chunk is a user error; finite rows so large that a chunk's float32 sum overflows
    are not."""
    import torch

    from transferlab.util import UserInputError

    huge = np.full((600, 8), 3e38, dtype=np.float32)
    source = lbfgs.RowSource(huge, "cpu", 100 * 8 * 4, torch.float32)
    assert source.streamed
    assert sum(int(c.shape[0]) for _, _, c in source.chunks()) == 600
    bad = huge.copy()
    bad[450, 3] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        list(lbfgs.RowSource(bad, "cpu", 100 * 8 * 4, torch.float32).chunks())


@pytest.mark.parametrize("storage", ["chunks", "gzip", "partly written", "big-endian", "contiguous"])
def test_row_blocks_read_any_hdf5_storage(tmp_path, storage):
    """Aligned blocks read from any storage, the last one short: plain or compressed chunks, chunks never
    written (HDF5's fill value), big-endian or contiguous rows."""
    X, _ = _classes(1000, 12, 3)
    kwargs = {"contiguous": {}, "gzip": {"chunks": (64, 12), "compression": "gzip"}}.get(storage, {"chunks": (64, 12)})
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("X", X.shape, dtype=">f2" if storage == "big-endian" else "f2", **kwargs)
        if storage == "partly written":
            d[:300], d[700:] = X[:300], X[700:]
            X[300:700] = 0  # HDF5's fill value, never stored
        else:
            d[...] = X
    index = np.sort(np.random.default_rng(4).choice(1000, 800, replace=False))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        blocks = RowBlocks(f["X"], index, block_rows=192)
        np.testing.assert_array_equal(blocks[0:800], X[index].astype(np.float32))
        np.testing.assert_array_equal(RowBlocks(f["X"], block_rows=192)[0:1000], X.astype(np.float32))
