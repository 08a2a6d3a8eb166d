"""The depth curve the decision reads, measured one way for ``advise`` and the sweep alike.

Every layer of a comparison is measured the same way, on the same rows, and the peak is compared
with the last layer by a paired statistic (:mod:`transferlab.classifiers.compare`):

- fewer than :data:`SMALL_VAL` validation rows: the logistic-regression probe is scored by
  repeated stratified k-fold (:data:`FOLDS` folds, :data:`REPEATS` repeats) on train+val, every
  layer on the same folds, C chosen on the mean over folds; the peak-vs-last gap has Nadeau and
  Bengio's corrected standard error. One split of a hundred rows decides by a few images and
  moves with its seed; the folds use every labelled row. Even 1,000 rows are too few: a gap's own
  sampling noise is about one standard error, so a gap near the decision's line lands on either
  side of it with the seed. Measured on 1,000-row splits at seeds 0-2 (best earlier layer against
  the last, in standard errors), one split against the folds: CIFAR-10 at 128 px 2.4, 1.0, 1.8
  against 3.5, 4.1, 2.2; CIFAR-10 enlarged to 96 px 2.2, 0.5, and the last layer on top, against
  2.0, 1.9, 1.8; MNIST at 128 px 3.0, 3.0, 2.7 against 4.8, 6.2, 5.3. The folds cost about ten
  fits per layer where the split costs one; a layer's folds are solved as one stack, standardised
  once on train+val (:func:`transferlab.classifiers.protocol.fold_grid_scores`).
- otherwise: one split (the data's ``val`` split, else the heads' own stratified holdout of
  train: :func:`transferlab.classifiers.protocol.stratified_holdout`, the same rows), each layer's
  accuracy the probe's validation accuracy, and the peak-vs-last gap paired on the same rows.

The test split is never read here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transferlab.classifiers.compare import (
    Gap,
    choose_on_folds,
    corrected_kfold_gap,
    fold_table,
    kfold_shape,
    paired_split_gap,
    repeated_folds,
    split_correctness,
)
from transferlab.classifiers.holdout import validation_source
from transferlab.features.cache import layer_info, load_split, read_cache_meta

from .decision import LayerPoint

SMALL_VAL = 2000  # fewer validation rows than this: compare layers by repeated k-fold on train+val
FOLDS = 5
REPEATS = 2
PROBE = "logreg"


@dataclass
class CurveMeasurement:
    """Per-layer validation accuracy, all measured by ``method``, and the paired peak-vs-last gap."""

    points: list  # LayerPoint, forward order
    method: str  # "split" or "kfold RxK"
    gap: Gap | None  # peak minus last layer, paired; None with one layer
    peak: str | None = None
    last: str | None = None
    params: dict = field(default_factory=dict)  # layer -> the probe's chosen hyperparameters
    # what pairs two measurements of the same rows: layer -> per-row correctness ("split", peak and last
    # layers) or per-fold accuracies ("kfold"); the folds themselves for the corrected variance
    paired: dict = field(default_factory=dict, repr=False)
    splits: list | None = field(default=None, repr=False)

    def gap_record(self) -> dict | None:
        """What :class:`transferlab.pipeline.decision.Evidence` carries of the gap."""
        if self.gap is None:
            return None
        return {**self.gap.to_dict(), "peak": self.peak, "last": self.last}


@dataclass
class FeatureRows:
    """The rows of a cache file a measurement reads: the heads' training rows and the validation rows
    (:func:`train_val_rows`), each narrowed to the given positions when ``train`` or ``val`` is set
    (``advise``'s capped sample of a full data set's file). A plain path reads them all."""

    path: str
    train: np.ndarray | None = None  # positions within the heads' training rows
    val: np.ndarray | None = None  # positions within the validation rows


def train_val_rows(source, layer: str, val_fraction: float, seed: int):
    """``(X, y, X_val, y_val)`` of a layer of ``source`` (a cache file's path or :class:`FeatureRows`), the
    validation rows by :func:`~transferlab.classifiers.holdout.validation_source`."""
    rows = source if isinstance(source, FeatureRows) else FeatureRows(source)
    X, y, _ = load_split(rows.path, "train", layer)
    has_val = "val" in read_cache_meta(rows.path)["splits"]
    Xv, yv = load_split(rows.path, "val", layer)[:2] if has_val else (None, None)
    tr, va, _, _ = validation_source(y, 0 if yv is None else len(yv), val_fraction, seed)
    if va is None:
        return X, y, None, None
    if not has_val:
        X, y, Xv, yv = X[tr], y[tr], X[va], y[va]
    if rows.train is not None:
        X, y = X[rows.train], y[rows.train]
    if rows.val is not None:
        Xv, yv = Xv[rows.val], yv[rows.val]
    return X, y, Xv, yv


def _path(source) -> str:
    return source.path if isinstance(source, FeatureRows) else source


def _peak_and_last(points: list) -> tuple:
    peak = max(points, key=lambda p: (p.val_accuracy, p.rel_depth))  # ties: the deeper layer
    last = max(points, key=lambda p: p.rel_depth)
    return peak, last


def measure_curve(source, layers: list, *, seed: int = 0, val_fraction: float = 0.2, known: dict | None = None,
                  small_val: int | None = None, folds: int = FOLDS, repeats: int = REPEATS, n_jobs: int | None = 1,
                  backend: str | None = None, log=None) -> CurveMeasurement:
    """Measure the probe at every layer of ``layers`` in ``source`` (a cache file's path, or :class:`FeatureRows`
    of one) and the peak-vs-last gap.

    ``known`` maps a layer to a one-split validation accuracy already measured by the same probe
    on the same rows (a sweep's logreg rows): those layers are not refitted on the one-split path
    (the peak and the last layer are, for their per-row pairs). The k-fold fits run through joblib
    (``n_jobs``, ``backend``: :mod:`transferlab.classifiers.parallel`), one task per layer,
    reading its layer from the cache file once for all folds; ``n_jobs=1`` (no ``backend``): in this process,
    a thread per core (:func:`_in_threads`). Returns a :class:`CurveMeasurement`.
    """
    log = log or (lambda m: None)
    known = known or {}
    small_val = SMALL_VAL if small_val is None else small_val
    _, _, _, yv = train_val_rows(source, layers[0], val_fraction, seed)
    if yv is None or len(yv) < small_val:
        return _kfold_curve(source, layers, seed, val_fraction, folds, repeats, n_jobs, backend, log)
    points, params, correct = [], {}, {}

    def pairs_of(name):  # per-row correctness on the validation rows, fitted once per layer
        if name not in correct:
            X, y, Xv, yv = train_val_rows(source, name, val_fraction, seed)
            correct[name], params[name] = split_correctness(X, y, Xv, yv, PROBE, seed=seed)
        return correct[name]

    for name in layers:
        info = layer_info(_path(source), name)
        acc = float(known[name]) if name in known else float(pairs_of(name).mean())
        points.append(LayerPoint(name, info["rel_depth"], acc, int(len(yv)), method="split"))
        log(f"  {name:<12} val {acc:.3f}")
    peak, last = _peak_and_last(points)
    peak_pairs = pairs_of(peak.layer)  # kept where the peak is the last layer too: peak_gap_between reads it
    gap = paired_split_gap(peak_pairs, pairs_of(last.layer)) if peak.layer != last.layer else None
    return CurveMeasurement(points, "split", gap, peak.layer, last.layer, params, correct)


def _labelled_rows(source, layer: str, val_fraction: float, seed: int):
    """Train+val rows of a layer (features, labels): what the folds are cut from."""
    X, y, Xv, yv = train_val_rows(source, layer, val_fraction, seed)
    return (np.concatenate([X, Xv]), np.concatenate([y, yv])) if Xv is not None else (X, y)


def _fold_task(source, layer, splits, val_fraction, seed):
    """The fits of one layer on every fold of the k-fold measurement, ``(grid_points, table)``; reads the layer's
    rows once (a worker gets only the source)."""
    X, y = _labelled_rows(source, layer, val_fraction, seed)
    return fold_table(X, y, splits, PROBE, seed=seed)


def _on_one_torch_thread(fn, *args):
    """``fn(*args)`` with torch on one intra-op thread in this thread (OpenMP's count is each thread's own)."""
    import torch

    torch.set_num_threads(1)
    return fn(*args)


def _in_threads(fn, tasks: list) -> list:
    """``[fn(*t) for t in tasks]`` in this process, through joblib's threading backend: one thread per core torch
    would use, each task running its torch operations on its own thread (one intra-op thread each: the cores are
    the tasks'). Torch's thread count is set back afterwards.

    A layer's k-fold stack is many small operations (narrow layers: mostly the Python of each solver
    iteration, which holds the interpreter lock); two layers at once still overlap one's operations with
    the other's Python, and one thread's spinning for small products is gone (bench/README.md, advise).
    """
    import torch

    from transferlab.classifiers.parallel import parallel

    cores = torch.get_num_threads()
    if cores < 2 or len(tasks) < 2:
        return [fn(*t) for t in tasks]
    torch.set_num_threads(1)
    try:
        with parallel(min(cores, len(tasks)), "threading") as run:
            return run(_on_one_torch_thread, [(fn, *t) for t in tasks])
    finally:
        torch.set_num_threads(cores)


def _kfold_curve(source, layers, seed, val_fraction, folds, repeats, n_jobs, backend, log) -> CurveMeasurement:
    """Every layer on the same repeated stratified folds of train+val."""
    from transferlab.classifiers.parallel import parallel

    _, y_all = _labelled_rows(source, layers[0], val_fraction, seed)
    splits = repeated_folds(y_all, folds, repeats, seed)
    method = kfold_shape(splits)
    tasks = [(source, name, splits, val_fraction, seed) for name in layers]  # one task, one read per layer
    info = {name: layer_info(_path(source), name) for name in layers}
    if n_jobs == 1 and backend is None:
        # the widest layers first (their stacks cost the most): the last task to start is a cheap one
        widest = sorted(range(len(layers)), key=lambda i: -info[layers[i]]["dim"])
        results = [None] * len(layers)
        for i, result in zip(widest, _in_threads(_fold_task, [tasks[i] for i in widest])):
            results[i] = result
    else:
        with parallel(n_jobs, backend) as run:
            results = run(_fold_task, tasks)
    points, per_fold, params = [], {}, {}
    for name, (grid, table) in zip(layers, results):
        per_fold[name], params[name] = choose_on_folds(grid, table)
        acc = float(per_fold[name].mean())
        points.append(LayerPoint(name, info[name]["rel_depth"], acc, int(y_all.size), method=method))
        log(f"  {name:<12} {method} {acc:.3f}")
    peak, last = _peak_and_last(points)
    gap = corrected_kfold_gap(per_fold[peak.layer], per_fold[last.layer], splits) if peak.layer != last.layer else None
    return CurveMeasurement(points, method, gap, peak.layer, last.layer, params, per_fold, splits)


def peak_gap_between(a: CurveMeasurement, b: CurveMeasurement) -> Gap:
    """``a``'s peak minus ``b``'s peak, paired: two measurements of the same rows (the same training and
    validation rows, or the same folds; e.g. one data set at two input sizes, or two backbones).

    Raises ``ValueError`` when they were not measured the same way."""
    if a.method != b.method or a.peak is None or b.peak is None:
        raise ValueError(f"cannot pair a {a.method} measurement with a {b.method} one")
    if a.method == "split":
        return paired_split_gap(a.paired[a.peak], b.paired[b.peak])
    if [t.tolist() for _, t in a.splits] != [t.tolist() for _, t in b.splits]:
        raise ValueError("the two k-fold measurements were not made on the same folds")
    return corrected_kfold_gap(a.paired[a.peak], b.paired[b.peak], a.splits)


def known_probe_accuracies(rows: list[dict], cache_file: str, cfg) -> dict:
    """Layer -> one-split validation accuracy of ``cache_file``'s logreg rows in a sweep's ``rows`` (all data,
    first repeat, the sweep's seed) when ``cfg`` (the sweep's configuration) fitted them with the default grid
    and preprocessing: the same probe on the same rows as :func:`measure_curve`'s, so it is passed on as
    ``known``, not refitted."""
    if cfg.preprocessing is not None or cfg.full_grid:
        return {}
    return {r["layer"]: float(r["val_accuracy"]) for r in rows
            if r.get("cache_file") == cache_file and r.get("head") == PROBE and not r.get("shots")
            and str(r.get("repeat", "0")) in ("0", "") and r.get("val_accuracy") not in ("", None)
            and str(r.get("seed")) == str(cfg.seed)}
