"""Layer similarity off the cache: linear CKA (Kornblith et al., ICML 2019) between every pair of cached layers.

Linear CKA of two representations ``X`` (n, p) and ``Y`` (n, q) of the same rows, each centred by
column, is ``||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)``: 1 for representations equal up to a rotation
and an isotropic scaling, near 0 for unrelated ones. :func:`cka_matrix` computes it on a seeded
subsample of at most ``max_rows`` rows of one split, read from the HDF5 cache chunk by chunk
(:func:`transferlab.features.cache.open_layers`): no layer is held beyond its capped rows.
:func:`layer_similarity` does that per cache file of a sweep (``results.json``'s ``layer_similarity``).
"""

from __future__ import annotations

import numpy as np

from transferlab.util import UserInputError

__all__ = ["MAX_ROWS", "cka_matrix", "layer_similarity", "linear_cka"]

MAX_ROWS = 2000  # rows of the subsample CKA is measured on, unless told


def _centred(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X - X.mean(axis=0)


def _gram_norm(Xc: np.ndarray) -> float:
    """``||Xc'Xc||_F``, from the smaller of the two Gram matrices (their nonzero spectra agree)."""
    G = Xc.T @ Xc if Xc.shape[1] <= Xc.shape[0] else Xc @ Xc.T
    return float(np.linalg.norm(G))


def _cka_centred(Xc, Yc, norm_x, norm_y) -> float:
    if norm_x == 0.0 or norm_y == 0.0:  # a constant representation: CKA is undefined
        return float("nan")
    return float(np.linalg.norm(Yc.T @ Xc) ** 2 / (norm_x * norm_y))


def linear_cka(X, Y) -> float:
    """Linear CKA between two representations of the same rows (arrays (n, p) and (n, q)); NaN when
    either is constant.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> round(linear_cka(X, 3 * X + 1), 6)
    1.0
    """
    Xc, Yc = _centred(X), _centred(Y)
    if Xc.ndim != 2 or Yc.ndim != 2 or Xc.shape[0] != Yc.shape[0]:
        raise ValueError(f"linear_cka needs two 2-D arrays of the same rows, got shapes {Xc.shape} and {Yc.shape}")
    return _cka_centred(Xc, Yc, _gram_norm(Xc), _gram_norm(Yc))


def _read_rows(ds, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """The sorted ``rows`` of an h5py dataset, read one contiguous slice of ``chunk_rows`` at a time."""
    out = np.empty((rows.size, ds.shape[1]), dtype=np.float64)
    done = 0
    for start in range(0, int(ds.shape[0]), chunk_rows):
        stop = min(start + chunk_rows, int(ds.shape[0]))
        hi = int(np.searchsorted(rows, stop))
        if hi > done:
            block = ds[start:stop]
            out[done:hi] = block[rows[done:hi] - start]
            done = hi
    return out


def cka_matrix(features_file, layers=None, split: str = "train", max_rows: int = MAX_ROWS, seed: int = 0,
               chunk_rows: int | None = None) -> dict:
    """Linear CKA between every pair of finished layers of one split of a cache.

    Parameters
    ----------
    features_file : str or path-like
        The HDF5 cache.
    layers : list of str, optional
        Default: every layer of the split, in depth order.
    split : str
        The split whose rows are compared.
    max_rows : int
        Cap of the subsample (rows drawn without replacement, seeded); all rows when the split has
        no more.
    seed : int
        Seed of the subsample.
    chunk_rows : int, optional
        Rows read per slice; default the dataset's HDF5 chunk height.

    Returns
    -------
    dict
        ``layers`` (the order of both axes), ``matrix`` (list of rows; None where a layer is
        constant), ``split``, ``n_rows`` (rows compared), ``seed``.
    """
    from transferlab.features.cache import list_layers, open_layers

    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 2:
        raise UserInputError(f"max_rows must be a whole number of rows, at least 2, got {max_rows!r}")
    names = list_layers(features_file, split) if layers is None else list(dict.fromkeys(layers))
    if not names:
        raise UserInputError(f"split {split!r} of {features_file} has no layers: extract some layers first")
    with open_layers(features_file, split, names) as (ids, datasets):
        n = int(ids.size)
        rows = np.arange(n) if n <= max_rows else np.sort(np.random.default_rng(seed).choice(n, max_rows,
                                                                                             replace=False))
        centred, norms = [], []
        for name in names:
            ds = datasets[name]
            step = int(chunk_rows or (ds.chunks[0] if ds.chunks else 1024))
            Xc = _centred(_read_rows(ds, rows, max(1, step)))
            if not np.isfinite(Xc).all():
                raise UserInputError(f"layer {name!r} of split {split!r} in {features_file} holds NaN or infinite "
                                     "values: re-extract it (float32 if float16 overflows)")
            centred.append(Xc)
            norms.append(_gram_norm(Xc))
    L = len(names)
    M = np.eye(L)
    for a in range(L):
        if norms[a] == 0.0:
            M[a, a] = np.nan
        for b in range(a + 1, L):
            M[a, b] = M[b, a] = _cka_centred(centred[a], centred[b], norms[a], norms[b])
    matrix = [[None if not np.isfinite(v) else float(v) for v in row] for row in M]
    return {"layers": names, "matrix": matrix, "split": split, "n_rows": int(rows.size), "seed": int(seed)}


def layer_similarity(cache_files, previous=None, max_rows: int = MAX_ROWS, seed: int = 0) -> list[dict]:
    """:func:`cka_matrix` of the train split of each cache file, with its ``cache_file`` and ``cache_key``.

    An entry of ``previous`` (what an earlier call returned) for the same file, key, layers, cap and
    seed is reused as it is: a rerun on an unchanged cache reads only its attributes. A file whose
    layers cannot be compared (damage, non-finite values) gets an ``error`` instead of a ``matrix``.
    """
    from transferlab.features.cache import list_layers, read_cache_meta

    earlier = {(e.get("cache_file"), e.get("cache_key"), tuple(e.get("layers") or ()), e.get("max_rows"),
                e.get("seed")): e for e in previous or [] if isinstance(e, dict)}
    out = []
    for path in cache_files:
        path = str(path)
        key, layers = read_cache_meta(path).get("key"), list_layers(path)
        entry = earlier.get((path, key, tuple(layers), int(max_rows), int(seed)))
        if entry is None:
            entry = {"cache_file": path, "cache_key": key, "max_rows": int(max_rows), "seed": int(seed),
                     "layers": layers}
            try:
                entry.update(cka_matrix(path, layers, max_rows=max_rows, seed=seed))
            except UserInputError as exc:  # a damaged or non-finite layer: the report says why, the sweep goes on
                entry["error"] = str(exc)
        out.append(entry)
    return out
