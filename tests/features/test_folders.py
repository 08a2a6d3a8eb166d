"""Image folders: the accepted layouts, the split of what is missing, refusals, and the fingerprint."""
import os

import numpy as np
import pytest
from PIL import Image

from transferlab.features import UserInputError, load_dataset


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
    os.utime(root / "train" / "cat" / "0.png", ns=(1, 1))
    assert load_dataset(f"folder:{root}").fingerprint != ds.fingerprint


def _tree(root, layout: dict, n=4):
    """``layout``: {relative class folder: number of images}; image i of a folder has grey level 30*i mod 256."""
    for rel, k in layout.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            Image.fromarray(np.full((8, 8, 3), (30 * i) % 256, np.uint8)).save(d / f"{i}.png")
    return root


def test_flat_class_folders_get_a_seeded_stratified_test_split(tmp_path):
    root = _tree(tmp_path / "flat", {"cat": 10, "dog": 10, "eel": 5})
    ds = load_dataset(str(root), seed=3, test_fraction=0.2)  # a bare path is read as folder:
    assert ds.spec == f"folder:{root}" and ds.class_names == ["cat", "dog", "eel"]
    tr, te = ds.splits["train"], ds.splits["test"]
    assert len(tr) + len(te) == 25 and len(te) == 5
    assert list(np.bincount(te.labels)) == [2, 2, 1]  # stratified: 20% of each class
    assert not set(map(str, tr.paths)) & set(map(str, te.paths))
    assert "stratified" in ds.layout and "0.2" in ds.layout
    again = load_dataset(str(root), seed=3, test_fraction=0.2)
    other_seed = load_dataset(str(root), seed=4, test_fraction=0.2)
    assert again.fingerprint == ds.fingerprint
    assert [str(p) for p in again.splits["test"].paths] == list(map(str, te.paths))
    assert other_seed.fingerprint != ds.fingerprint  # the split is part of the cache key
    assert load_dataset(str(root), seed=3, test_fraction=0.4).fingerprint != ds.fingerprint
    # labels follow the folder each file sits in
    for split in (tr, te):
        assert [ds.class_names[c] for c in split.labels] == [p.parent.name for p in split.paths]


def test_train_only_and_train_val_layouts(tmp_path):
    only = _tree(tmp_path / "only", {"train/a": 5, "train/b": 5})
    ds = load_dataset(f"folder:{only}")
    assert set(ds.splits) == {"train", "test"} and len(ds.splits["test"]) == 2  # default 0.2 of 10
    inet = _tree(tmp_path / "inet", {"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 3})
    ds = load_dataset(f"folder:{inet}")
    assert set(ds.splits) == {"train", "test"} and len(ds.splits["test"]) == 5
    assert "val/ is the test split" in ds.layout
    ds = load_dataset(f"folder:{inet}", test_fraction=0.25)  # asked to split: val stays validation
    assert set(ds.splits) == {"train", "val", "test"} and len(ds.splits["val"]) == 5 and len(ds.splits["test"]) == 2
    full = _tree(tmp_path / "full", {"train/a": 3, "train/b": 3, "validation/a": 1, "validation/b": 1,
                                     "test/a": 2, "test/b": 1})
    ds = load_dataset(f"folder:{full}")
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 6, "val": 2, "test": 3}


@pytest.mark.parametrize("layout, message", [
    ({"train/a": 2, "train/b": 2, "test/a": 1, "extras/a": 1}, "mixes split folders"),
    ({"train/a": 2, "train/b": 2, "train/b/sub": 1, "test/a": 1}, "is a folder inside class 'b'"),
    ({"a": 3, "b": 3, "c": 0}, "holds no images"),
    ({"train/a": 2, "train/b": 2, "test/c": 1}, "training folder does not have"),
    ({"test/a": 2, "test/b": 2}, "no train/ folder"),
    ({"a": 4}, "at least 2"),
    ({"train/a": 2, "train/b": 2, "val/a": 1, "validation/b": 1}, "keep one of them"),
])
def test_ambiguous_folders_are_refused_with_the_fix(tmp_path, layout, message):
    root = _tree(tmp_path / "d", layout)
    with pytest.raises(UserInputError, match=message):
        load_dataset(f"folder:{root}")


def test_loose_images_and_empty_test_classes(tmp_path):
    root = _tree(tmp_path / "d", {"train/a": 2, "train/b": 2, "test/a": 1, "test/b": 1, "test/empty": 0})
    with pytest.raises(UserInputError, match="training folder does not have"):
        load_dataset(f"folder:{root}")
    (root / "test" / "empty").rmdir()
    (root / "train" / "b" / "notes.txt").write_text("x")
    (root / "train" / ".DS_Store").write_text("x")
    ds = load_dataset(f"folder:{root}")
    assert any("1 non-image file" in n for n in ds.notes)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "stray.png")
    with pytest.raises(UserInputError, match="outside class folders"):
        load_dataset(f"folder:{root}")


def test_content_fingerprint_sees_an_edit_that_keeps_size_and_mtime(tmp_path):
    root = _tree(tmp_path / "d", {"a": 3, "b": 3})
    f = root / "a" / "1.png"
    st = f.stat()
    stat_fp, content_fp = (load_dataset(str(root), fingerprint=m).fingerprint for m in ("stat", "content"))
    assert stat_fp != content_fp
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # same size, other bytes
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_dataset(str(root), fingerprint="stat").fingerprint == stat_fp  # the default's documented limit
    assert load_dataset(str(root), fingerprint="content").fingerprint != content_fp
    with pytest.raises(UserInputError, match="unknown --fingerprint"):
        load_dataset(str(root), fingerprint="md5")
