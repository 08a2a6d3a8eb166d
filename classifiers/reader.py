"""Reading the HDF5 feature cache written by ``features/`` (layout in docs/CONTRACT.md).

Only finished work is read: a split whose ``complete`` attribute is false, or with
``n_done < n_total``, is refused with the advice to rerun ``transferlab extract``. Layers are the
datasets under ``/<split>/features/``, in the order of their ``depth`` attribute (forward order).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from features.errors import UserInputError

_RERUN = "rerun `transferlab extract` to finish it"


def _open(features_file) -> h5py.File:
    path = os.fspath(features_file)
    if not os.path.isfile(path):
        raise UserInputError(f"features file {path} does not exist: run `transferlab extract` first, "
                             "or pass the path it printed")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserInputError(f"features file {path} is not a readable HDF5 cache ({exc}): "
                             "rebuild it with `transferlab extract`") from None


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_cache_meta(features_file) -> dict:
    """Root attributes of a feature cache as plain Python values.

    JSON-encoded attributes (``versions``, ``class_names``) are decoded; ``path`` and the list of
    ``splits`` are added.

    Parameters
    ----------
    features_file : str or path-like
        The HDF5 file ``transferlab extract`` printed.

    Returns
    -------
    dict
    """
    with _open(features_file) as f:
        meta = {k: _attr(v) for k, v in f.attrs.items()}
        meta["splits"] = [name for name in f if isinstance(f[name], h5py.Group)]
    for key in ("versions", "class_names"):
        if isinstance(meta.get(key), str):
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                pass
    meta["path"] = os.path.abspath(os.fspath(features_file))
    return meta


def _split_group(f: h5py.File, split: str) -> h5py.Group:
    if split not in f or not isinstance(f[split], h5py.Group):
        present = ", ".join(n for n in f if isinstance(f[n], h5py.Group)) or "none"
        raise UserInputError(f"split {split!r} is not in {f.filename} (splits: {present}): {_RERUN}")
    group = f[split]
    n_total = int(group.attrs.get("n_total", -1))
    n_done = int(group.attrs.get("n_done", -1))
    if not bool(group.attrs.get("complete", False)) or n_done < n_total:
        raise UserInputError(f"split {split!r} of {f.filename} is incomplete ({n_done}/{n_total} rows done): {_RERUN}")
    return group


def _layers(group: h5py.Group) -> list[str]:
    if "features" not in group:
        return []
    feats = group["features"]
    names = []
    feats.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names, key=lambda n: (int(feats[n].attrs.get("depth", 1 << 30)), n))


def list_layers(features_file, split: str = "train") -> list[str]:
    """Layer names of a cache in depth order (forward pass), as stored under ``/<split>/features``.

    Examples
    --------
    >>> list_layers("cache/digits-lite0.h5")  # doctest: +SKIP
    ['blocks.0', 'blocks.1', 'blocks.2', 'conv_head']
    """
    with _open(features_file) as f:
        return _layers(_split_group(f, split))


def layer_info(features_file, layer: str, split: str = "train") -> dict:
    """``{"layer", "depth", "dim", "dtype", "pooling", "raw_shape"}`` of one layer; unknown layer -> error."""
    with _open(features_file) as f:
        ds = _layer_dataset(f, _split_group(f, split), split, layer)
        return {
            "layer": layer,
            "depth": int(ds.attrs.get("depth", -1)),
            "dim": int(ds.shape[1]),
            "dtype": str(ds.dtype),
            "pooling": _attr(ds.attrs.get("pooling")),
            "raw_shape": _attr(ds.attrs.get("raw_shape")),
        }


def _layer_dataset(f, group, split, layer) -> h5py.Dataset:
    if "features" not in group or layer not in group["features"] or not isinstance(group["features"][layer], h5py.Dataset):
        valid = _layers(group)
        listing = ", ".join(valid) if valid else "none: extract some layers first"
        raise UserInputError(f"layer {layer!r} is not in split {split!r} of {f.filename}; valid layers: {listing}")
    ds = group["features"][layer]
    if ds.ndim != 2:
        raise UserInputError(f"layer {layer!r} of {f.filename} has shape {ds.shape}, not (rows, dims): "
                             "rebuild the cache with `transferlab extract`")
    return ds


def load_split(features_file, split: str, layer: str):
    """Features, labels and sample ids of one split and layer.

    Parameters
    ----------
    features_file : str or path-like
        The HDF5 cache.
    split : str
        ``train``, ``val`` or ``test``.
    layer : str
        A layer name from :func:`list_layers`.

    Returns
    -------
    X : ndarray of float32, shape (N, D)
    y : ndarray of int64, shape (N,)
    ids : ndarray of int64, shape (N,)
    """
    with _open(features_file) as f:
        group = _split_group(f, split)
        ds = _layer_dataset(f, group, split, layer)
        if "labels" not in group:
            raise UserInputError(f"split {split!r} of {f.filename} has no labels: {_RERUN}")
        y = np.asarray(group["labels"][()], dtype=np.int64)
        ids = np.asarray(group["ids"][()], dtype=np.int64) if "ids" in group else np.arange(y.size, dtype=np.int64)
        if ds.shape[0] != y.size or ids.size != y.size:
            raise UserInputError(f"layer {layer!r} of split {split!r} in {f.filename} has {ds.shape[0]} rows for "
                                 f"{y.size} labels: {_RERUN}")
        X = np.asarray(ds[()], dtype=np.float32)
    return X, y, ids


def has_split(features_file, split: str) -> bool:
    """Whether the cache has a group for ``split`` (complete or not)."""
    with _open(features_file) as f:
        return split in f and isinstance(f[split], h5py.Group)
