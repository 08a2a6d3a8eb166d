import hashlib
import json
import pickle

import joblib
import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from transferlab.classifiers.heads import available_heads, make_head
from transferlab.classifiers.persistence import FORMAT_VERSION, library_versions, load_head, save_head
from transferlab.util import UserInputError, save_artifact


def _no_unpickling(monkeypatch):
    """Every way the load path could unpickle raises instead."""
    def boom(*a, **k):
        raise AssertionError("the load path unpickled")

    real_np_load = np.load

    def np_load(*a, allow_pickle=False, **k):
        if allow_pickle:
            boom()
        return real_np_load(*a, allow_pickle=False, **k)

    for name in ("load", "loads", "Unpickler", "_Unpickler"):
        monkeypatch.setattr(pickle, name, boom)
    monkeypatch.setattr(joblib, "load", boom)
    monkeypatch.setattr(np, "load", np_load)


@pytest.fixture
def saved(tmp_path, digits_arrays):
    X, y, Xt, _ = digits_arrays
    est = make_head("knn", n_neighbors=3).fit(X, y)
    save_head(tmp_path / "head", est, {"layer": "blocks.3", "val_accuracy": np.float64(0.9), "params": {"k": 3}})
    return tmp_path / "head", est, Xt


class OwnHead(ClassifierMixin, BaseEstimator):
    """A head of the user's own: not one of the classes saved as arrays."""

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(0) for c in self.classes_])
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X):
        return self.classes_[((X[:, None, :] - self.means_) ** 2).sum(-1).argmin(1)]


HEADS = [("logreg", {}), ("svm", {}), ("ridge", {}), ("knn", {}), ("mlp", {"max_iter": 40}), ("svm-rbf", {}),
         ("logreg", {"solver": "sklearn"}), ("svm", {"solver": "sklearn"}),
         ("logreg", {"preprocessing": "l2+standardize", "pca": 16}), ("knn", {"preprocessing": "none", "pca": 8})]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("classes", [10, 2])
@pytest.mark.parametrize("name,kw", HEADS, ids=[f"{n}-{'-'.join(map(str, kw.values())) or 'default'}"
                                                 for n, kw in HEADS])
def test_every_built_in_head_saves_as_arrays_and_predicts_exactly_as_before(tmp_path, digits_arrays, monkeypatch,
                                                                              name, kw, classes):
    X, y, Xt, _ = digits_arrays
    keep = y < classes
    est = make_head(name, **kw).fit(X[keep], y[keep])
    save_head(tmp_path / "h", est, {"layer": "blocks.3"})
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head.json", "head.safetensors"]
    _no_unpickling(monkeypatch)
    loaded, meta = load_head(tmp_path / "h")
    monkeypatch.undo()
    assert type(loaded) is type(est) and [type(s) for _, s in loaded.steps] == [type(s) for _, s in est.steps]
    np.testing.assert_array_equal(loaded.predict(Xt), est.predict(Xt))
    for method in ("predict_proba", "decision_function"):
        if hasattr(est, method):
            np.testing.assert_array_equal(getattr(loaded, method)(Xt), getattr(est, method)(Xt))
    assert meta["format_version"] == FORMAT_VERSION and meta["head_file"] == "head.safetensors"


def test_the_registry_holds_no_head_this_test_file_forgets():
    assert set(available_heads()) == {n for n, _ in HEADS}


def test_saved_head_records_its_hashes_versions_and_no_temporary_files(saved):
    folder, est, Xt = saved
    loaded, meta = load_head(folder)
    np.testing.assert_array_equal(loaded.predict(Xt), est.predict(Xt))
    assert meta["layer"] == "blocks.3" and meta["val_accuracy"] == 0.9
    assert meta["head_sha256"] == hashlib.sha256((folder / "head.safetensors").read_bytes()).hexdigest()
    assert meta["versions"] == library_versions()
    assert {"python", "numpy", "scikit-learn", "joblib", "torch"} <= set(meta["versions"])
    assert meta["estimator"]["class"] == "Pipeline" and [s["class"] for s in meta["estimator"]["steps"]] == [
        "Normalizer", "TorchKNeighborsClassifier"]
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.safetensors"]  # no temp files left


def test_tampered_head_file_is_refused_before_it_is_read(saved):
    folder, _, _ = saved
    data = bytearray((folder / "head.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "head.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="sha256"):
        load_head(folder)


def test_scikit_learn_version_mismatch_is_refused(saved, monkeypatch):
    from transferlab.classifiers import persistence

    folder, _, _ = saved
    installed = persistence.library_versions()
    monkeypatch.setattr(persistence, "library_versions", lambda: {**installed, "scikit-learn": "0.0.1"})
    with pytest.raises(UserInputError, match=r"scikit-learn .* this environment has 0\.0\.1"):
        load_head(folder)


def test_missing_files_are_user_errors(saved, tmp_path):
    folder, _, _ = saved
    with pytest.raises(UserInputError, match="head.json does not exist"):
        load_head(tmp_path / "empty")
    (folder / "head.safetensors").unlink()
    with pytest.raises(UserInputError, match="head.safetensors does not exist"):
        load_head(folder)


def test_a_head_of_your_own_is_pickled_and_loads_only_with_allow_pickle(tmp_path, digits_arrays, monkeypatch):
    X, y, Xt, _ = digits_arrays
    folder = tmp_path / "own"
    save_head(folder, make_head("logreg").fit(X, y), {"layer": "blocks.3"})
    own = OwnHead().fit(X, y)
    save_head(folder, own, {"layer": "blocks.3"})  # over a head saved as arrays: that file goes
    assert sorted(p.name for p in folder.iterdir()) == ["head.joblib", "head.json"]
    assert json.loads((folder / "head.json").read_text())["head_file"] == "head.joblib"
    with monkeypatch.context() as m:
        _no_unpickling(m)
        with pytest.raises(UserInputError, match=r"head.joblib is a pickle.*--allow-pickle"):
            load_head(folder)
    loaded, _ = load_head(folder, allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict(Xt), own.predict(Xt))
    save_head(folder, make_head("logreg").fit(X, y), {"layer": "blocks.3"})  # and back: the pickle goes
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.safetensors"]


@pytest.mark.parametrize("dist", ["scikit-learn", "joblib"])
def test_a_pickle_allowed_is_still_refused_on_a_version_mismatch(tmp_path, digits_arrays, monkeypatch, dist):
    from transferlab.classifiers import persistence

    X, y, _, _ = digits_arrays
    save_head(tmp_path / "own", OwnHead().fit(X, y), {"layer": "blocks.3"})
    installed = persistence.library_versions()
    monkeypatch.setattr(persistence, "library_versions", lambda: {**installed, dist: "0.0.1"})
    monkeypatch.setattr(joblib, "load", lambda *a, **k: pytest.fail("unpickled despite a version mismatch"))
    with pytest.raises(UserInputError, match=rf"{dist} .* this environment has 0\.0\.1"):
        load_head(tmp_path / "own", allow_pickle=True)


def test_a_head_saved_by_the_previous_version_is_refused_naming_the_fix(tmp_path, digits_arrays, monkeypatch):
    X, y, Xt, _ = digits_arrays
    est = make_head("logreg").fit(X, y)
    folder = tmp_path / "old"
    folder.mkdir()
    # format 1: every head a pickle, head.json with the same self-hash and head_file / head_sha256
    save_artifact(folder, "head.json", {"layer": "blocks.3", "versions": library_versions()},
                  {"head": ("head.joblib", pickle.dumps(est))}, 1)
    with monkeypatch.context() as m:
        _no_unpickling(m)
        with pytest.raises(UserInputError) as err:
            load_head(folder)
    message = str(err.value)
    assert "\n" not in message and "is a pickle" in message
    assert "--allow-pickle" in message and f"retrain the head with `transferlab train --out {folder}`" in message
    loaded, _ = load_head(folder, allow_pickle=True)
    np.testing.assert_array_equal(loaded.predict_proba(Xt), est.predict_proba(Xt))


def test_a_recipe_that_does_not_rebuild_a_working_head_is_one_user_error(saved):
    from transferlab.util import meta_sha256

    folder, _, _ = saved
    meta = json.loads((folder / "head.json").read_text())
    state = meta["estimator"]["steps"][1]["state"]
    state["_fit_X"], state["_y"] = state["_y"], state["_fit_X"]  # arrays of the wrong shapes, hashes recomputed
    meta["meta_sha256"] = meta_sha256(meta)
    (folder / "head.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match="does not rebuild a working head"):
        load_head(folder)
