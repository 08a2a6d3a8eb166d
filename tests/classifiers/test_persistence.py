import joblib
import numpy as np
import pytest

from transferlab.classifiers.heads import make_head
from transferlab.classifiers.persistence import file_sha256, library_versions, load_head, save_head
from transferlab.util import UserInputError


@pytest.fixture
def saved(tmp_path, digits_arrays):
    X, y, Xt, _ = digits_arrays
    est = make_head("knn", n_neighbors=3).fit(X, y)
    save_head(tmp_path / "head", est, {"layer": "blocks.3", "val_accuracy": np.float64(0.9), "params": {"k": 3}})
    return tmp_path / "head", est, Xt


def test_saved_head_loads_and_predicts_the_same(saved):
    folder, est, Xt = saved
    loaded, meta = load_head(folder)
    np.testing.assert_array_equal(loaded.predict(Xt), est.predict(Xt))
    assert meta["layer"] == "blocks.3" and meta["val_accuracy"] == 0.9
    assert meta["head_sha256"] == file_sha256(folder / "head.joblib")
    assert meta["versions"] == library_versions()
    assert {"python", "numpy", "scikit-learn", "joblib", "torch"} <= set(meta["versions"])
    assert sorted(p.name for p in folder.iterdir()) == ["head.joblib", "head.json"]  # no temp files left


def test_tampered_head_file_is_refused_before_unpickling(saved, monkeypatch):
    folder, _, _ = saved
    data = bytearray((folder / "head.joblib").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "head.joblib").write_bytes(bytes(data))
    monkeypatch.setattr(joblib, "load", lambda *a, **k: pytest.fail("unpickled an unverified file"))
    with pytest.raises(UserInputError, match="sha256"):
        load_head(folder)


@pytest.mark.parametrize("dist", ["scikit-learn", "joblib"])
def test_version_mismatch_is_refused(saved, monkeypatch, dist):
    from transferlab.classifiers import persistence

    folder, _, _ = saved
    installed = persistence.library_versions()
    monkeypatch.setattr(persistence, "library_versions", lambda: {**installed, dist: "0.0.1"})  # another environment
    monkeypatch.setattr(joblib, "load", lambda *a, **k: pytest.fail("unpickled despite a version mismatch"))
    with pytest.raises(UserInputError, match=rf"{dist} .* this environment has 0\.0\.1"):
        load_head(folder)


def test_missing_files_are_user_errors(saved, tmp_path):
    folder, _, _ = saved
    with pytest.raises(UserInputError, match="head.json does not exist"):
        load_head(tmp_path / "empty")
    (folder / "head.joblib").unlink()
    with pytest.raises(UserInputError, match="head.joblib does not exist"):
        load_head(folder)
