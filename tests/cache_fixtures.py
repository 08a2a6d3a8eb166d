"""Fixtures: small HDF5 feature caches written by the cache module's writer, built from sklearn's digits."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

# layer name -> depth; written in an order that is neither depth nor alphabetical order
LAYER_DEPTHS = {"conv_head": 2, "stem": 0, "blocks.3": 1}
CLASS_NAMES = [f"digit{i}" for i in range(10)]


def digits_features(seed=0):
    """Per-layer feature matrices of the 1797 digits, and the labels."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    rng = np.random.default_rng(seed)
    stem = X.reshape(-1, 8, 8).reshape(-1, 4, 2, 4, 2).mean((2, 4)).reshape(-1, 16)
    proj = np.maximum(X @ rng.normal(0, 0.5, (64, 96)) + rng.normal(0, 0.1, 96), 0)
    return {"stem": stem, "blocks.3": X, "conv_head": proj}, y


def write_cache(path, labels, features, *, incomplete=(), dtype=np.float16, class_names=CLASS_NAMES,
                chunk_rows=64):
    """Write a feature cache through the cache module's writer: ``labels[split]`` (N,), ``features[split][layer]``.

    Splits named in ``incomplete`` stop half way (their layers' ``n_done`` at N // 2, not complete).
    """
    from types import SimpleNamespace

    from transferlab.features.cache import CacheWriter
    from transferlab.features.data import Split
    from transferlab.features.layers import LayerInfo
    from transferlab.features.spec import ExtractionSpec

    spec = ExtractionSpec("lite0", image_size=224, dtype=np.dtype(dtype).name, arch="timm:tf_efficientnet_lite0",
                          weights_sha256="0" * 64, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    dataset = SimpleNamespace(spec="digits", short_name="digits", fingerprint="f" * 16, class_names=class_names)
    axis = sorted(LAYER_DEPTHS, key=LAYER_DEPTHS.get)
    path = Path(path)
    path.unlink(missing_ok=True)
    with CacheWriter(path, "k123", spec, dataset, axis, log=lambda m: None) as w:
        for split, y in labels.items():
            infos = [LayerInfo(layer, LAYER_DEPTHS.get(layer, 99), LAYER_DEPTHS.get(layer, 99) / 2, X.shape[1], 1,
                               (X.shape[1], 7, 7), X.shape[1], 0) for layer, X in features[split].items()]
            w.prepare(Split(split, np.asarray(y), ids=np.arange(len(y), dtype=np.int64) + 1000), infos,
                      chunk_bytes=chunk_rows * max(X.shape[1] for X in features[split].values())
                      * np.dtype(dtype).itemsize)
            n = len(y) // 2 if split in incomplete else len(y)
            w.write(split, 0, {layer: np.asarray(X[:n], dtype=dtype) for layer, X in features[split].items()})
            if split not in incomplete:
                w.finish(split, list(features[split]))
    return path


def digits_splits(with_val=True, n_train=500, n_val=200, n_test=400):
    feats, y = digits_features()
    bounds = {"train": (0, n_train)}
    start = n_train
    if with_val:
        bounds["val"] = (start, start + n_val)
        start += n_val
    bounds["test"] = (start, start + n_test)
    labels = {s: y[a:b] for s, (a, b) in bounds.items()}
    features = {s: {layer: X[a:b] for layer, X in feats.items()} for s, (a, b) in bounds.items()}
    return labels, features


@pytest.fixture
def cache_with_val(tmp_path):
    labels, features = digits_splits(with_val=True)
    return write_cache(tmp_path / "cache_val.h5", labels, features)


@pytest.fixture
def cache_no_val(tmp_path):
    labels, features = digits_splits(with_val=False)
    return write_cache(tmp_path / "cache.h5", labels, features)


@pytest.fixture
def digits_arrays():
    """Standardised digits: (X_train, y_train, X_test, y_test), float32."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X = ((X - X[:600].mean(0)) / (X[:600].std(0) + 1e-3)).astype(np.float32)
    return X[:600], y[:600], X[600:1000], y[600:1000]


@pytest.fixture
def cache_writer():
    """The :func:`write_cache` helper, for tests that build their own cache."""
    return write_cache


@pytest.fixture
def split_data():
    """The :func:`digits_splits` helper: (labels, features) per split."""
    return digits_splits
