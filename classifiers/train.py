"""Training heads on cached features: the Python API behind ``transferlab train`` and the sweep.

:func:`train_head` reads one layer's train/val/test rows from the HDF5 cache, runs the selection
protocol (:func:`classifiers.protocol.select_and_fit`), saves the head when asked, and returns one
results row. :func:`train_layers` does that for many layers through joblib; :func:`train_multilayer`
trains one head over several layers (:mod:`.multilayer`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from transferlab.features.cache import layer_info, list_layers, load_split, read_cache_meta
from transferlab.features.spec import ExtractionSpec
from transferlab.util import UserInputError, jsonable

from ._validation import check_two_classes
from .heads import get_head_spec
from .multilayer import MULTI_HEAD, MultiLayerLogisticRegression
from .parallel import parallel
from .persistence import save_head
from .protocol import per_class_report, sample_shots, select_and_fit

# root attributes of the cache copied into head.json beside the extraction spec (provenance of the rows)
STOP_FIELDS = ("gained", "lost", "p_value")  # multilayer.paired_gain_test of a greedy step, kept in its val_scores
_CACHE_FIELDS = ("data", "data_fingerprint", "key")


def train_head(features_file, layer: str, head: str, out=None, preprocessing: str | None = None,
               pca: int | None = None, val_fraction: float = 0.2, seed: int = 0, n_jobs: int = 1,
               full_grid: bool = False, shots: int | None = None, *, grid=None, solver: str | None = None,
               backend: str | None = None, head_params: dict | None = None, extra_meta: dict | None = None) -> dict:
    """Train one head on one cached layer and return its results row.

    Parameters
    ----------
    features_file : str or path-like
        HDF5 cache written by ``transferlab extract``; its ``train`` and ``test`` splits (and
        ``val`` when present) must be complete.
    layer : str
        Layer name, see :func:`transferlab.features.cache.list_layers`.
    head : str
        ``svm``, ``svm-rbf``, ``logreg``, ``mlp`` or ``knn``.
    out : str or path-like, optional
        Folder for ``head.safetensors`` and ``head.json``; nothing is saved when None.
    preprocessing, pca, val_fraction, seed, n_jobs, full_grid, grid, solver, backend, head_params
        See :func:`classifiers.protocol.select_and_fit`.
    extra_meta : dict, optional
        More fields for ``head.json`` (they are covered by its ``meta_sha256`` like the rest).
    shots : int, optional
        Train on ``shots`` examples per class of the train split (seeded by ``seed``). Without a
        ``val`` split, the training rows not drawn serve as validation rows (so even 1-shot
        selects on data, never on test).

    Returns
    -------
    dict
        ``backbone, weights, layer, depth, dim, head, preprocessing, pca, params, val_accuracy,
        test_accuracy, fit_seconds, selection, solver, n_train, n_val, n_test, seed, shots,
        features_file, key, report, val_scores, notes, out``.

    Examples
    --------
    >>> row = train_head("cache/digits-lite0.h5", "blocks.3", "logreg", out="runs/b3")  # doctest: +SKIP
    >>> row["test_accuracy"]  # doctest: +SKIP
    0.95
    """
    get_head_spec(head)
    meta = read_cache_meta(features_file)
    info = layer_info(features_file, layer, "train")
    X_tr, y_tr, _ = load_split(features_file, "train", layer)
    X_te, y_te, _ = load_split(features_file, "test", layer)
    X_va = y_va = None
    if "val" in meta["splits"]:
        X_va, y_va, _ = load_split(features_file, "val", layer)
    check_two_classes(y_tr, f"training labels of {os.fspath(features_file)}")
    X_tr, y_tr, X_va, y_va, refit_with_val = draw_shots(X_tr, y_tr, X_va, y_va, shots, seed)
    class_names = meta.get("class_names") if isinstance(meta.get("class_names"), list) else None
    result = select_and_fit(
        X_tr, y_tr, X_va, y_va, X_te, y_te, head, preprocessing=preprocessing, pca=pca, grid=grid,
        full_grid=full_grid, val_fraction=val_fraction, seed=seed, n_jobs=n_jobs, backend=backend, solver=solver,
        head_params=head_params, class_names=class_names, refit_with_val=refit_with_val,
    )
    row = {
        "backbone": meta.get("backbone"),
        "weights": meta.get("weights"),
        "layer": layer,
        "depth": info["depth"],
        "rel_depth": info["rel_depth"],
        "dim": info["dim"],
        **result.to_dict(),
        "shots": shots,
        "features_file": meta["path"],
        "key": meta.get("key"),
        "out": None,
    }
    if out is not None:
        save_head(out, result.estimator, head_meta(meta, row, class_names, extra_meta))
        row["out"] = str(Path(out).resolve())
    return row


def draw_shots(X_tr, y_tr, X_va, y_va, shots: int | None, seed: int):
    """``(X_tr, y_tr, X_va, y_va, refit_with_val)`` for ``shots`` examples per class of train (None: as given).
    Without a val split, the training rows not drawn become the validation rows, never trained on
    (``refit_with_val`` False), so even 1-shot selects on data, never on test."""
    if shots is None:
        return X_tr, y_tr, X_va, y_va, True
    rows = sample_shots(y_tr, shots, seed)
    refit_with_val = True
    if X_va is None:  # low-shot: the training rows not drawn are labelled data never trained on
        rest = np.setdiff1d(np.arange(y_tr.size), rows)
        if rest.size and np.unique(y_tr[rest]).size == np.unique(y_tr).size:
            X_va, y_va, refit_with_val = X_tr[rest], y_tr[rest], False
    return X_tr[rows], y_tr[rows], X_va, y_va, refit_with_val


def head_meta(cache_meta: dict, row: dict, class_names, extra_meta: dict | None = None) -> dict:
    """The ``head.json`` fields of a head trained on a cache: the cache's provenance, the results row
    (less ``out``), the extraction spec that rebuilds the features, then ``extra_meta``."""
    meta = {k: cache_meta[k] for k in _CACHE_FIELDS if k in cache_meta}
    meta.update({k: v for k, v in row.items() if k not in ("out", "format_version")})
    meta.update(extraction=ExtractionSpec.from_dict(cache_meta).to_dict(), rel_depth=row["rel_depth"],
                cache_format_version=cache_meta.get("format_version"), class_names=class_names,
                cache_versions=cache_meta.get("versions"))
    meta.update(extra_meta or {})
    return meta


def _train_one(features_file, layer, head, out, kwargs):
    return train_head(features_file, layer, head, out=out, **kwargs)


def train_layers(features_file, layers=None, head: str = "logreg", out=None, *, n_jobs: int = 1,
                 backend: str | None = None, **kwargs) -> list[dict]:
    """Train one head per layer, the layers in parallel through joblib; rows in depth order.

    Parameters
    ----------
    features_file : str or path-like
        The HDF5 cache.
    layers : list of str, optional
        Layer names; default every layer of the train split.
    head : str
        Head name.
    out : str or path-like, optional
        Each layer's head is saved to ``out/<layer>/``.
    n_jobs, backend : int, str or None
        joblib workers and backend across layers (each layer's grid then runs serially).
    **kwargs
        Passed to :func:`train_head` (preprocessing, pca, seed, shots, ...).

    Returns
    -------
    list of dict
    """
    if "n_jobs" in kwargs:
        raise UserInputError("train_layers takes n_jobs for the layers; each layer's grid runs serially")
    available = list_layers(features_file)
    layers = available if layers is None else list(layers)
    for layer in layers:
        layer_info(features_file, layer)  # unknown layer: error listing the valid ones, before any work
    jobs = [(features_file, layer, head, None if out is None else Path(out) / layer, kwargs) for layer in layers]
    with parallel(n_jobs, backend) as run:
        rows = run(_train_one, jobs)
    return sorted(rows, key=lambda r: r["depth"])


def train_multilayer(features_file, layers=None, out=None, *, val_fraction: float = 0.2, seed: int = 0,
                     shots: int | None = None, grid=None, max_layers: int | None = None, selection: str = "greedy",
                     head_params: dict | None = None, extra_meta: dict | None = None) -> dict:
    """Train a multi-layer head on cached layers and return its results row (``layer``: the chosen layers).

    Parameters
    ----------
    features_file : str or path-like
        HDF5 cache written by ``transferlab extract``.
    layers : list of str, optional
        The candidate layers; default every layer of the train split.
    out : str or path-like, optional
        Folder for ``head.safetensors`` and ``head.json``; nothing is saved when None. The saved head
        takes the chosen layers only, concatenated in depth order (``layers`` in ``head.json``).
    val_fraction, seed, shots : see :func:`transferlab.classifiers.train.train_head`.
    grid : sequence of float, optional
        The C grid; default the logreg head's.
    max_layers, selection, head_params : see :class:`MultiLayerLogisticRegression` (``head_params``:
        more of its parameters, e.g. ``{"device": "cuda"}``).
    extra_meta : dict, optional
        More fields for ``head.json``.

    Returns
    -------
    dict
        The fields of :func:`~transferlab.classifiers.train.train_head`'s row; ``layer`` is the chosen
        layers joined by ``+``, ``layers`` their list, ``candidates`` the layers selected from, ``params``
        ``{"C": ..., "layers": [...]}``.
    """
    started = time.perf_counter()
    meta = read_cache_meta(features_file)
    candidates = list_layers(features_file) if layers is None else list(layers)
    if not candidates:
        raise UserInputError(f"no layers to choose from in {os.fspath(features_file)}: extract some layers first")
    infos = {layer: layer_info(features_file, layer, "train") for layer in candidates}
    candidates = sorted(dict.fromkeys(candidates), key=lambda n: infos[n]["depth"])

    def split(name):
        parts = [load_split(features_file, name, layer) for layer in candidates]
        return np.concatenate([p[0] for p in parts], axis=1), parts[0][1]

    X_tr, y_tr = split("train")
    X_va = y_va = None
    if "val" in meta["splits"]:
        X_va, y_va = split("val")
    check_two_classes(y_tr, f"training labels of {os.fspath(features_file)}")
    X_tr, y_tr, X_va, y_va, refit = draw_shots(X_tr, y_tr, X_va, y_va, shots, seed)
    held_out = X_va is None  # the estimator holds validation rows out of X_tr
    est = MultiLayerLogisticRegression(
        [infos[n]["dim"] for n in candidates], candidates, Cs=None if grid is None else tuple(grid),
        selection=selection, max_layers=max_layers, val_fraction=val_fraction, random_state=seed, refit=refit,
        **(head_params or {}))
    est.fit(X_tr, y_tr, X_va, y_va)
    n_val = est.n_val_
    head = est.restricted()
    fit_seconds = time.perf_counter() - started
    del X_tr, X_va
    chosen = [n for n in candidates if n in head.layer_names]  # depth order: the saved head's columns
    X_te, y_te = None, None
    if "test" in meta["splits"]:  # the single look at the test rows, after every choice is made
        parts = [load_split(features_file, "test", layer) for layer in chosen]
        X_te, y_te = np.concatenate([p[0] for p in parts], axis=1), parts[0][1]
    class_names = meta.get("class_names") if isinstance(meta.get("class_names"), list) else None
    test_accuracy = report = None
    if X_te is not None:
        pred = head.predict(X_te)
        test_accuracy = float(np.mean(pred == y_te))
        report = per_class_report(y_te, pred, head.classes_, class_names)
    deepest = max(chosen, key=lambda n: infos[n]["depth"])
    row = {
        "backbone": meta.get("backbone"), "weights": meta.get("weights"),
        "layer": "+".join(chosen), "layers": chosen, "candidates": candidates,
        "depth": infos[deepest]["depth"], "rel_depth": infos[deepest]["rel_depth"],
        "dim": int(sum(infos[n]["dim"] for n in chosen)),
        "head": MULTI_HEAD, "params": {"C": est.C_, "layers": chosen},
        "val_accuracy": est.val_accuracy_, "test_accuracy": test_accuracy, "fit_seconds": fit_seconds,
        "val_scores": [{"params": {"C": s["C"], "layers": s["layers"]}, "val_accuracy": s["val_accuracy"],
                        **{k: s[k] for k in STOP_FIELDS if k in s}}  # the stop's test of each step after the first
                       for s in jsonable(est.selection_path_)],
        "report": jsonable(report), "seed": seed,
        "preprocessing": "standardize+layer-scaling", "pca": None, "selection": est.selection_,
        "solver": "torch", "n_train": int(y_tr.size) - (n_val if held_out else 0), "n_val": n_val,
        "n_test": 0 if y_te is None else int(y_te.size), "notes": [], "shots": shots,
        "features_file": meta["path"], "key": meta.get("key"), "out": None,
    }
    if out is not None:
        save_head(out, head, head_meta(meta, row, class_names, extra_meta))
        row["out"] = str(Path(out).resolve())
    return row
