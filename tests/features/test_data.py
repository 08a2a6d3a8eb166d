import numpy as np
import pytest
from PIL import Image

from transferlab.features import UserInputError, load_dataset
from tests.conftest import make_npz


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


def _write_folder(root, n=3):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    return root


def test_folder_lists_images_per_class_and_fingerprints_mtimes(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    ds = load_dataset(f"folder:{root}")
    assert ds.class_names == ["cat", "dog"] and len(ds.splits["train"]) == 6
    assert list(ds.splits["test"].labels) == [0, 0, 0, 1, 1, 1]
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "train" / "cat" / "0.png")
    import os
    os.utime(root / "train" / "cat" / "0.png", ns=(1, 1))
    assert load_dataset(f"folder:{root}").fingerprint != ds.fingerprint


def test_folder_without_test_split_is_refused(tmp_path):
    (tmp_path / "f" / "train" / "a").mkdir(parents=True)
    with pytest.raises(UserInputError, match="no 'test' folder"):
        load_dataset(f"folder:{tmp_path / 'f'}")
