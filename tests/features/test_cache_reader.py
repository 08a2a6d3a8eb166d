import h5py
import numpy as np
import pytest
from sklearn.datasets import load_digits

from transferlab.features.cache import layer_info, list_layers, load_split, read_cache_meta
from transferlab.util import UserInputError


def test_layers_come_in_depth_order(cache_with_val):
    assert list_layers(cache_with_val) == ["stem", "blocks.3", "conv_head"]
    assert layer_info(cache_with_val, "conv_head")["depth"] == 2
    assert layer_info(cache_with_val, "blocks.3")["dim"] == 64


def test_load_split_returns_float32_features_labels_and_ids(cache_with_val):
    X, y, ids = load_split(cache_with_val, "val", "blocks.3")
    digits, labels = load_digits(return_X_y=True)
    assert X.dtype == np.float32 and y.dtype == np.int64 and ids.dtype == np.int64
    np.testing.assert_array_equal(y, labels[500:700])
    np.testing.assert_allclose(X, (digits[500:700] / 16).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(ids, np.arange(200) + 1000)


def test_cache_meta_decodes_json_attributes(cache_no_val):
    meta = read_cache_meta(cache_no_val)
    assert meta["class_names"] == [f"digit{i}" for i in range(10)] and set(meta["versions"]) >= {"torch", "h5py"}
    assert meta["splits"] == ["test", "train"] and meta["backbone"] == "lite0"


@pytest.mark.parametrize("flag", ["complete", "n_done"])
def test_an_incomplete_layer_is_refused(tmp_path, flag, cache_writer, split_data):
    labels, features = split_data(with_val=False)
    path = cache_writer(tmp_path / "c.h5", labels, features)
    with h5py.File(path, "a") as f:
        if flag == "complete":
            f["test/features/stem"].attrs["complete"] = False
        else:
            f["test/features/stem"].attrs["n_done"] = 10
    load_split(path, "train", "stem")
    with pytest.raises(UserInputError, match=r"incomplete.*transferlab extract"):
        load_split(path, "test", "stem")


def test_a_finished_layer_stays_readable_while_another_layer_of_its_split_is_unfinished(tmp_path, cache_writer,
                                                                                      split_data):
    labels, features = split_data(with_val=False)
    path = cache_writer(tmp_path / "c.h5", labels, features)
    with h5py.File(path, "a") as f:  # as an interrupted layer-add leaves it
        f["train/features/conv_head"].attrs.update(n_done=76, complete=False)
        f["train"].attrs.update(n_done=76, complete=False)
    X, _, _ = load_split(path, "train", "blocks.3")
    assert X.shape == (500, 64)
    with pytest.raises(UserInputError, match=r"'conv_head' of split 'train'.*76/500"):
        load_split(path, "train", "conv_head")


def test_unknown_layer_lists_the_valid_layers(cache_no_val):
    with pytest.raises(UserInputError, match=r"'blocks\.9'.*valid layers: stem, blocks\.3, conv_head"):
        load_split(cache_no_val, "train", "blocks.9")


def test_missing_file_and_missing_split_are_user_errors(tmp_path, cache_no_val):
    with pytest.raises(UserInputError, match="does not exist"):
        list_layers(tmp_path / "nope.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(UserInputError, match="not a readable HDF5"):
        read_cache_meta(tmp_path / "junk.h5")
    with pytest.raises(UserInputError, match=r"split 'val' is not in .*splits: test, train"):
        load_split(cache_no_val, "val", "stem")
