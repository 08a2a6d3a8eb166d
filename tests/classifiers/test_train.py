import json

import h5py
import numpy as np
import pytest

from transferlab.classifiers.persistence import load_head
from transferlab.classifiers.train import train_head, train_layers
from transferlab.features.cache import load_split
from transferlab.util import UserInputError

CONTRACT_FIELDS = {"layer", "backbone", "weights", "preprocessing", "class_names", "data", "features_file", "key",
                   "params", "val_accuracy", "test_accuracy", "report", "versions", "seed", "head_sha256", "extraction"}
SPEC_FIELDS = {"backbone", "weights", "seed", "image_size", "pooling", "dtype", "arch", "weights_sha256", "mean", "std",
               "interpolation", "resize"}


def test_train_head_uses_the_val_split_and_saves_a_loadable_head(cache_with_val, tmp_path):
    row = train_head(cache_with_val, "blocks.3", "knn", out=tmp_path / "m")
    assert row["selection"] == "val split" and (row["n_train"], row["n_val"], row["n_test"]) == (500, 200, 400)
    assert (row["layer"], row["depth"], row["dim"], row["head"]) == ("blocks.3", 1, 64, "knn")
    assert row["preprocessing"] == "l2" and set(row["params"]) == {"n_neighbors"}
    meta = json.loads((tmp_path / "m" / "head.json").read_text())
    assert CONTRACT_FIELDS <= set(meta)
    assert SPEC_FIELDS <= set(meta["extraction"]) and meta["extraction"]["image_size"] == 224
    assert meta["test_accuracy"] == row["test_accuracy"] and meta["class_names"][3] == "digit3"
    assert "digit3" in meta["report"]
    head, _ = load_head(tmp_path / "m")
    Xt, yt, _ = load_split(cache_with_val, "test", "blocks.3")
    assert np.mean(head.predict(Xt) == yt) == pytest.approx(row["test_accuracy"])
    assert head.named_steps["head"].n_samples_fit_ == 700


def test_without_val_split_train_is_split(cache_no_val):
    row = train_head(cache_no_val, "stem", "logreg", seed=1)
    assert row["selection"].startswith("train fraction 0.2") and (row["n_train"], row["n_val"]) == (400, 100)
    assert row["solver"] == "torch" and len(row["val_scores"]) == 12
    assert row["out"] is None and 0.5 < row["test_accuracy"] <= 1.0


def test_shots_limit_training_examples_per_class(cache_with_val):
    row = train_head(cache_with_val, "stem", "svm", shots=2)
    assert row["n_train"] == 20 and row["shots"] == 2 and row["n_val"] == 200


def test_single_class_labels_are_a_user_error(tmp_path, cache_writer, split_data):
    labels, features = split_data(with_val=False)
    labels["train"] = np.zeros_like(labels["train"])
    path = cache_writer(tmp_path / "one.h5", labels, features)
    with pytest.raises(UserInputError, match=r"one\.h5 contain a single class"):
        train_head(path, "stem", "svm")


def test_incomplete_cache_and_unknown_layer_are_user_errors(cache_with_val):
    with pytest.raises(UserInputError, match="valid layers: stem, blocks.3, conv_head"):
        train_head(cache_with_val, "head", "svm")
    with h5py.File(cache_with_val, "a") as f:
        f["val/features/stem"].attrs["complete"] = False
    with pytest.raises(UserInputError, match="'stem' of split 'val'.*incomplete"):
        train_head(cache_with_val, "stem", "svm")


def test_train_layers_returns_rows_in_depth_order(cache_no_val, tmp_path):
    rows = train_layers(cache_no_val, head="knn", out=tmp_path / "runs", grid=[1, 5])
    assert [r["layer"] for r in rows] == ["stem", "blocks.3", "conv_head"]
    assert all((tmp_path / "runs" / r["layer"] / "head.json").is_file() for r in rows)
    with pytest.raises(UserInputError, match="valid layers"):
        train_layers(cache_no_val, layers=["stem", "nope"], head="knn")
