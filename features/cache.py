"""HDF5 feature cache: one file per extraction key, resumable, checksummed, verifiable.

Layout (CONTRACT.md)::

    /                          attrs: format_version, key, backbone, arch, weights, weights_sha256,
                                      image_size, resize, mean, std, pooling, dtype, data,
                                      data_fingerprint, class_names (JSON), versions (JSON)
    /<split>/labels            int64 (N,)
    /<split>/ids               int64 (N,) stable sample ids (row i holds sample ids[i])
    /<split>/features/<layer>  float16 or float32 (N, D), chunked by rows, fletcher32;
                               attrs: depth, raw_shape, pooling, n_done, complete
    /<split>                   attrs: n_total, n_done, complete

The key hashes (data fingerprint, backbone, weights fingerprint, preprocessing, pooling, dtype); the
split is a group inside the file, and layers asked for later go into the same file. Every dataset
carries HDF5's fletcher32 checksum, so damage is detected on read. ``n_done`` is committed only after
the rows it covers are flushed and ``complete`` is set last, so a file is never taken as finished
work before it is, and a crash at any moment leaves a file that resumes from ``n_done``. A lock file
beside the cache file keeps two processes from writing the same key at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from .errors import UserInputError

FORMAT_VERSION = 1
KEY_FIELDS = ("format_version", "data_fingerprint", "arch", "weights_sha256", "image_size", "resize",
              "mean", "std", "pooling", "dtype")
SUFFIX = ".h5"


def compute_key(meta: dict) -> str:
    """sha256 over the fields that decide what the features are (not over the split or the layers)."""
    payload = {k: meta[k] for k in KEY_FIELDS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()


def file_name(meta: dict, key: str) -> str:
    def slug(s):
        return "".join(c if c.isalnum() or c in "-" else "-" for c in str(s)).strip("-")[:40]

    parts = [meta["data_name"], meta["backbone"].split(":")[-1],
             "imagenet" if meta["weights"] == "imagenet" else ("random" if meta["weights"] == "random" else "file"),
             f"{meta['image_size']}px", meta["pooling"].replace(":", ""), meta["dtype"]]
    return "_".join(slug(p) for p in parts) + f"_{key[:12]}{SUFFIX}"


@contextmanager
def locked(path: Path, timeout: float = -1, notify=None):
    """Hold ``<path>.lock`` (flock: released even when the process is killed)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if notify:
            notify(f"waiting for another process extracting into {path.name} ...")
        lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()


def _attr(v):
    return v.decode() if isinstance(v, bytes) else v


def split_status(grp: h5py.Group) -> dict:
    layers = {}
    feats = grp.get("features")
    if feats is not None:
        for name, ds in feats.items():
            layers[name] = {"dim": int(ds.shape[1]), "depth": int(ds.attrs.get("depth", -1)),
                            "n_done": int(ds.attrs.get("n_done", 0)), "complete": bool(ds.attrs.get("complete", False)),
                            "dtype": str(ds.dtype)}
    return {"n_total": int(grp.attrs.get("n_total", 0)), "n_done": int(grp.attrs.get("n_done", 0)),
            "complete": bool(grp.attrs.get("complete", False)), "layers": layers}


def read_status(path: "str | Path") -> dict | None:
    """Attributes and per-split status of a cache file, or None when it cannot be opened."""
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            for k in ("mean", "std"):
                if k in attrs:
                    attrs[k] = [float(x) for x in np.atleast_1d(attrs[k])]
            splits = {name: split_status(g) for name, g in f.items() if isinstance(g, h5py.Group)}
    except (OSError, KeyError, ValueError):
        return None
    return {"attrs": attrs, "splits": splits}


def is_complete(status: dict | None, splits, layers) -> bool:
    if not status:
        return False
    for s in splits:
        st = status["splits"].get(s)
        if st is None:
            return False
        for layer in layers:
            ls = st["layers"].get(layer)
            if ls is None or not ls["complete"] or ls["n_done"] != st["n_total"]:
                return False
    return True


def cache_files(cache_dir: "str | Path") -> list[Path]:
    d = Path(cache_dir)
    return sorted(d.glob(f"*{SUFFIX}")) if d.is_dir() else []


def list_cache(cache_dir: "str | Path") -> list[dict]:
    rows = []
    for p in cache_files(cache_dir):
        st = read_status(p)
        row = {"file": str(p), "bytes": p.stat().st_size}
        if st is None:
            row.update(status="unreadable")
        else:
            a = st["attrs"]
            complete = all(s["complete"] for s in st["splits"].values()) and bool(st["splits"])
            layers = sorted({l for s in st["splits"].values() for l in s["layers"]},
                            key=lambda l: min(s["layers"].get(l, {}).get("depth", 1 << 30) for s in st["splits"].values()))
            row.update(status="complete" if complete else "partial", data=a.get("data"), backbone=a.get("backbone"),
                       weights=a.get("weights"), image_size=a.get("image_size"), pooling=a.get("pooling"),
                       dtype=a.get("dtype"), splits={k: v["n_total"] for k, v in st["splits"].items()},
                       layers=layers)
        rows.append(row)
    return rows


def verify(path: "str | Path") -> list[str]:
    """Read every byte of a cache file; return the problems found (empty list: the file is sound)."""
    path = Path(path)
    problems = []
    if not path.is_file():
        return [f"{path}: no such file"]
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return [f"{path}: cannot be opened as HDF5 ({exc}); it is truncated or damaged: rm it and extract again"]
    with f:
        for k in ("format_version", "key", "backbone", "weights_sha256", "pooling", "dtype", "data_fingerprint"):
            if k not in f.attrs:
                problems.append(f"{path}: root attribute '{k}' missing")
        for split, grp in f.items():
            try:
                n_total = int(grp.attrs["n_total"])
                for name in ("labels", "ids"):
                    arr = grp[name][()]
                    if arr.shape != (n_total,):
                        problems.append(f"{path}:{split}/{name} has shape {arr.shape}, expected ({n_total},)")
                n_done_split = int(grp.attrs.get("n_done", 0))
                layer_done = []
                for lname, ds in grp.get("features", {}).items():
                    n_done = int(ds.attrs.get("n_done", 0))
                    layer_done.append(n_done)
                    if ds.ndim != 2 or ds.shape[0] != n_total:
                        problems.append(f"{path}:{split}/features/{lname} has shape {ds.shape}, expected ({n_total}, D)")
                    if bool(ds.attrs.get("complete", False)) and n_done != n_total:
                        problems.append(f"{path}:{split}/features/{lname} is marked complete at {n_done}/{n_total} rows")
                    step = max(1, ds.chunks[0] if ds.chunks else n_total)
                    for s in range(0, n_done, step * 16):
                        block = ds[s:min(n_done, s + step * 16)]
                        if not np.isfinite(block).all():
                            problems.append(f"{path}:{split}/features/{lname} holds non-finite values near row {s}")
                            break
                if layer_done and n_done_split > min(layer_done):
                    problems.append(f"{path}:{split} claims n_done={n_done_split} but a layer has only {min(layer_done)}")
                if bool(grp.attrs.get("complete", False)) and (n_done_split != n_total or not layer_done):
                    problems.append(f"{path}:{split} is marked complete at {n_done_split}/{n_total} rows")
            except (OSError, KeyError, ValueError) as exc:
                problems.append(f"{path}:{split} is damaged ({exc.__class__.__name__}: {exc})")
    return problems


def remove(paths) -> list[Path]:
    removed = []
    for p in map(Path, paths):
        if p.suffix != SUFFIX:
            raise UserInputError(f"{p} is not a cache file (*.h5); `transferlab cache ls` lists them")
        if not p.exists():
            raise UserInputError(f"{p} does not exist; `transferlab cache ls` lists the cache files")
        with locked(p, timeout=10):
            p.unlink()
        Path(str(p) + ".lock").unlink(missing_ok=True)
        removed.append(p)
    return removed


def quarantine(path: Path) -> Path:
    """Move an unreadable cache file aside (never delete what the user had)."""
    target = path.with_name(path.name + f".damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    return target
