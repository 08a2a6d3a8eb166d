import sys

import numpy as np
import pytest

from tests.conftest import make_npz
from transferlab.features import UserInputError, load_dataset


def test_digits_split_is_stratified_and_seeded():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert len(a.splits["train"]) + len(a.splits["test"]) == 1797
    assert np.array_equal(a.splits["test"].ids, b.splits["test"].ids)
    assert not np.array_equal(a.splits["test"].ids, c.splits["test"].ids)
    counts = np.bincount(a.splits["test"].labels)
    assert counts.min() >= 43 and counts.max() <= 47  # 25% of ~180 per class
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.splits["train"].images.dtype == np.uint8 and a.splits["train"].images.max() == 255


def test_npz_reads_optional_val_and_class_names(tmp_path):
    ds = load_dataset(f"npz:{make_npz(tmp_path / 'd.npz', val=9)}")
    assert set(ds.splits) == {"train", "val", "test"} and ds.class_names == ["class0", "class1", "class2"]


def test_npz_fingerprint_follows_content(tmp_path):
    p = make_npz(tmp_path / "d.npz")
    fp1 = load_dataset(f"npz:{p}").fingerprint
    make_npz(p, seed=1)
    assert load_dataset(f"npz:{p}").fingerprint != fp1


def test_npz_missing_keys_and_mismatched_lengths_are_named(tmp_path):
    np.savez(tmp_path / "a.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2))
    with pytest.raises(UserInputError, match="lacks the keys x_test, y_test"):
        load_dataset(f"npz:{tmp_path / 'a.npz'}")
    np.savez(tmp_path / "b.npz", x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.zeros(2, int),
             x_test=np.zeros((1, 4, 4), np.uint8), y_test=np.zeros(1, int))
    with pytest.raises(UserInputError, match="x_train has 3 images but y_train has 2 labels"):
        load_dataset(f"npz:{tmp_path / 'b.npz'}")
    with pytest.raises(UserInputError, match="does not exist"):
        load_dataset("npz:/no/such.npz")
    with pytest.raises(UserInputError, match="unknown data spec"):
        load_dataset("csv:x")


def test_bare_paths_are_guessed_and_unknown_specs_named(tmp_path):
    npz = make_npz(tmp_path / "d.npz")
    assert load_dataset(str(npz)).spec == f"npz:{npz}"
    with pytest.raises(UserInputError, match="no such folder or .npz file"):
        load_dataset(str(tmp_path / "missing"))


def test_data_root_is_the_user_cache_not_the_checkout(monkeypatch, tmp_path):
    from transferlab.features import default_cache_dir, default_data_root

    monkeypatch.setenv("TRANSFERLAB_DATA", str(tmp_path / "tl"))
    assert default_cache_dir() == tmp_path / "tl" / "cache"
    monkeypatch.delenv("TRANSFERLAB_DATA")
    from tests.conftest import ROOT

    assert ROOT not in default_data_root().resolve().parents  # not where the code is installed
    if sys.platform.startswith("linux"):  # platformdirs follows the XDG spec there
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_data_root() == tmp_path / "xdg" / "transferlab"


def test_the_word_digits_is_never_read_as_a_folder(tmp_path, monkeypatch):
    from tests.features.test_folders import _tree

    _tree(tmp_path / "digits", {"a": 2, "b": 2})
    monkeypatch.chdir(tmp_path)
    assert load_dataset("digits").spec == "digits"


def test_repeated_npz_class_names_are_refused_by_name(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=6, n_test=3)
    arrays = dict(np.load(npz))
    for names, said in ((["a", "a", "b"], "'a'"), (["b", "a", "b", "a"], "'a', 'b'")):
        np.savez(npz, **{**arrays, "class_names": np.array(names)})
        with pytest.raises(UserInputError) as err:
            load_dataset(f"npz:{npz}")
        assert str(err.value) == (f"{npz}: class_names repeats {said}; every class needs a name of its own: "
                                  f"rename or merge those classes")
