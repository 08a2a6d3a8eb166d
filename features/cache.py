"""The HDF5 feature cache: the one module that knows its layout; it writes, reads and verifies it.

Layout (the interface contract's, extended)::

    /                          attrs: format_version, key, data, data_name, data_fingerprint,
                                      class_names (JSON), catalog (JSON: the backbone's default
                                      layers in forward order), versions (JSON), and the resolved
                                      extraction spec (features.spec): backbone, weights, seed,
                                      image_size, pooling, dtype, arch, weights_sha256, mean, std,
                                      interpolation, resize, exif_transpose
    /<split>/labels            int64 (N,)
    /<split>/ids               int64 (N,) stable sample ids (row i holds sample ids[i])
    /<split>/features/<layer>  float16 or float32 (N, D), chunked by rows, fletcher32;
                               attrs: depth, rel_depth, raw_shape, pooling, n_done, complete
    /<split>                   attrs: n_total, n_done, complete

Integrity rule
--------------
- *Key.* The file name ends in the first 12 hex digits of the key, a SHA-256 over the data
  fingerprint, the cache format version and the spec's deciding fields (architecture, weights
  fingerprint, image size, resize, mean, std, pooling, dtype, exif_transpose). Another key never reuses the file:
  a file whose stored key differs, or that cannot be read, is moved aside (``*.damaged-<time>``),
  never deleted.
- *Complete.* A layer of a split is finished work when its ``complete`` attribute is true and its
  ``n_done`` equals the split's ``n_total``; completeness is per layer, so an interrupted run that
  was adding one layer leaves the finished layers usable. ``n_done`` is raised only after the rows
  it covers are flushed, and ``complete`` is set last.
- *Commits.* The writer queues computed rows in memory and commits them (write, flush, raise
  ``n_done``, flush) once ``COMMIT_SECONDS`` (1 s) have passed since the last commit or
  ``COMMIT_BYTES`` (64 MiB) are queued, and always when a split finishes or the run stops on an
  exception (Ctrl-C included). Extraction against the pure forward pass, commits included, is the
  P1 row of ``bench/README.md``.
- *Crash.* A kill at any moment leaves a file that resumes from each layer's ``n_done``; what a
  kill -9 loses is the queue, at most ``COMMIT_SECONDS`` of work. A split's own
  ``n_done``/``complete`` summarise its layers (for ``cache ls``); readers decide per layer.
- *Full disk / write failure.* Before each commit the writer checks that the folder has room for
  it (plus a margin for HDF5's metadata) and stops cleanly when it has not: the file stays sound and
  resumable. A write HDF5 itself reports as failed (also the errors it can only print while
  releasing a chunk) stops the run at once; the file is then closed and verified, and kept for
  resuming if it is sound, else moved aside (``*.damaged-<time>``). ``<file>.writing`` exists
  while a writer has the file open: a writer that finds it left behind (a kill -9, a segfault in
  the HDF5 library after a full disk) verifies the file before resuming and moves it aside when
  it is damaged.
- *Damage.* Every dataset carries HDF5's fletcher32 checksum, so a flipped byte is detected on
  read: readers (:func:`load_split`) refuse such a layer with a one-line error naming the file,
  split and layer. :func:`verify` reads every byte of every dataset, checks that every chunk
  holding finished rows was written, and names what is wrong; ``cache ls`` only reads attributes.
- *Concurrency.* ``<file>.lock`` (an flock, released when the process dies) is held exclusively
  by a writer and shared by readers: two writers never write one key at once, a writer waits for
  readers to finish, and a reader waits (saying so) while the file is being written by another
  process, instead of reading a half-updated file or calling it unreadable.
- *Removal.* ``cache rm`` removes only the cache's own files (:func:`foreign` says why another is
  not): a file whose root attributes are the cache's (a cache file, or a torchrun part file
  ``<file>.rank<R>of<W>.part``), or one named like them that cannot be opened (damage, a kill
  before the attributes were written). A user's own ``.h5`` or a folder is refused, never read
  for more than its attributes, never changed.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from transferlab.util import UserInputError, library_versions, sha256_json

from .locks import exclusive, shared
from .spec import ExtractionSpec, storage_dtype

FORMAT_VERSION = 1
SUFFIX = ".h5"
COMMIT_SECONDS = 1.0  # the writer commits queued rows at most this long after the last commit
COMMIT_BYTES = 64 << 20  # ... or as soon as this many bytes are queued
_RERUN = "rerun `transferlab extract` to finish it"
# root attributes every cache (and part) file carries: what tells the cache's own files from others
ROOT_ATTRS = ("format_version", "key", "backbone", "weights_sha256", "pooling", "dtype", "data_fingerprint")
PART_SUFFIX = ".part"
_CACHE_NAME = re.compile(r".+_[0-9a-f]{12}\.h5")
_PART_NAME = re.compile(r"(?P<file>.+_[0-9a-f]{12}\.h5)\.rank(?P<rank>\d+)of(?P<world>\d+)\.part")


# --- names and keys -------------------------------------------------------------------------------

def compute_key(spec: ExtractionSpec, data_fingerprint: str) -> str:
    """SHA-256 over what decides the features (not over the split or the layers)."""
    return sha256_json({"format_version": FORMAT_VERSION, "data_fingerprint": data_fingerprint, **spec.key_fields()})


def file_name(spec: ExtractionSpec, data_name: str, key: str) -> str:
    from transferlab.util import slug

    weights = spec.weights if spec.weights in ("imagenet", "random") else "file"
    parts = [data_name, spec.backbone.split(":")[-1], weights, f"{spec.image_size}px",
             spec.pooling.replace(":", ""), spec.dtype]
    return "_".join(slug(p) for p in parts) + f"_{key[:12]}{SUFFIX}"


def cache_path(cache_dir: "str | Path", spec: ExtractionSpec, dataset) -> tuple[Path, str]:
    """``(path, key)`` of the cache file for a resolved spec and a data set."""
    key = compute_key(spec, dataset.fingerprint)
    return Path(cache_dir) / file_name(spec, dataset.short_name, key), key


def part_path(path: "str | Path", rank: int, world_size: int) -> Path:
    """The part file of rank ``rank`` of ``world_size`` for the cache file ``path`` (:mod:`features.distributed`)."""
    return Path(path).with_name(f"{Path(path).name}.rank{rank}of{world_size}{PART_SUFFIX}")


def part_owner(path: "str | Path") -> Path | None:
    """The cache file a part file belongs to (None: ``path`` is not named as a part)."""
    m = _PART_NAME.fullmatch(Path(path).name)
    return Path(path).with_name(m["file"]) if m else None


def parts_of(path: "str | Path") -> list[Path]:
    """The part files of the cache file ``path`` that exist, any world size."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir() if part_owner(p) == path)


def part_files(cache_dir: "str | Path") -> list[Path]:
    """Every part file in a cache directory."""
    d = Path(cache_dir)
    return sorted(p for p in d.iterdir() if part_owner(p) is not None and p.is_file()) if d.is_dir() else []


def locked(path: Path, timeout: float = -1, notify=None):
    """Hold ``<path>.lock`` exclusively (a writer; :mod:`features.locks`)."""
    return exclusive(str(path) + ".lock", timeout, notify,
                     f"waiting for another process using {Path(path).name} (extracting into it or reading it) ...")


def reading(path: "str | Path", wait: float | None = None, notify=None):
    """Hold ``<path>.lock`` shared while reading; wait while another process writes the file."""
    return shared(str(path) + ".lock", str(path), wait, notify)


def _attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# --- writing --------------------------------------------------------------------------------------

class WriteFailed(OSError):
    """HDF5 could not write to the cache file (a full disk, an I/O error); the file may be damaged."""


def free_bytes(folder: "str | Path") -> int:
    return shutil.disk_usage(folder).free


METADATA_MARGIN = 1 << 20  # room kept free for HDF5's metadata (attributes, B-tree nodes) at each batch


@contextmanager
def _h5_write_errors():
    """Turn HDF5 write failures into :class:`WriteFailed`, also those h5py can only print.

    HDF5 writes a chunk when the chunk cache evicts it, often while h5py releases a dataset
    handle; a failure there is reported through ``sys.unraisablehook`` ("Exception ignored") and
    the run would go on with a damaged file (and later segfault inside HDF5).
    """
    caught = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: caught.append(u.exc_value)
    try:
        yield
    except WriteFailed:
        raise
    except (OSError, RuntimeError) as exc:
        raise WriteFailed(getattr(exc, "errno", None) or errno.EIO, _short(exc)) from None
    finally:
        sys.unraisablehook = old
    if caught:
        raise WriteFailed(errno.EIO, _short(caught[0]))


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return "No space left on device"
    return f"{exc.__class__.__name__}: {text[:160]}"


@dataclass
class _Queue:
    """A split's rows computed since the last commit: ``start:end`` of each layer, in batches."""

    start: int
    end: int
    parts: dict  # layer -> list of (B, D) arrays
    nbytes: int = 0


class CacheWriter:
    """Writes one cache file under the integrity rule above; use as a context manager.

    Parameters
    ----------
    path : Path
        The cache file (created when missing; moved aside when its key differs or it is unreadable).
    key : str
        :func:`compute_key` of ``spec`` and the data.
    spec : ExtractionSpec
        Resolved spec, written whole as root attributes.
    dataset : features.data.Dataset
        Its spec, name, fingerprint and class names become root attributes.
    catalog : list of str
        The backbone's default layers in forward order (the depth axis).
    log : callable
        Receives warnings (a file moved aside).
    """

    def __init__(self, path: Path, key: str, spec: ExtractionSpec, dataset, catalog: list, log=print):
        self._queue: dict[str, _Queue] = {}  # split -> rows computed, not yet committed
        self._committed = {}  # split -> rows committed (n_done of its layers being written)
        self._last_commit = time.monotonic()
        self.path, self.created = Path(path), not Path(path).exists()
        self.marker = Path(str(self.path) + ".writing")
        if not self.created:
            st = read_status(self.path)
            why = None
            if st is None or st["attrs"].get("key") != key:
                why = "could not be read back (or has another key)"
            elif self.marker.exists():
                log(f"note: a previous run stopped while writing {self.path.name}; verifying it before resuming")
                problems = _verify(self.path)
                if problems:
                    why = f"was left damaged by a run that stopped while writing it ({problems[0]})"
            if why:
                moved = quarantine(self.path)
                log(f"warning: {self.path.name} {why}; moved it to {moved.name} and starting afresh")
                self.created = True
        with open(self.marker, "w") as fh:  # removed again only after a clean close
            fh.flush()
            os.fsync(fh.fileno())
        self.failed = False
        with _h5_write_errors():
            self.f = h5py.File(self.path, "a")
            if self.created:
                attrs = {k: v for k, v in spec.to_dict().items() if v is not None}
                attrs.update(format_version=FORMAT_VERSION, key=key, data=dataset.spec, data_name=dataset.short_name,
                             data_fingerprint=dataset.fingerprint, class_names=json.dumps(list(dataset.class_names)),
                             catalog=json.dumps(list(catalog)), versions=json.dumps(library_versions()))
                self.f.attrs.update(attrs)
                self.f.flush()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not self.failed and not isinstance(exc, WriteFailed):
            try:  # a stop on an exception (Ctrl-C, a bad image) keeps the rows computed before it
                for split in list(self._queue):
                    self.commit(split)
            except WriteFailed:
                self.failed = True
        try:
            with _h5_write_errors():
                self.f.close()
        except WriteFailed:
            self.failed = True
            self._force_close()
            if exc_type is None:
                raise
        if not (self.failed or isinstance(exc, WriteFailed)):
            self.marker.unlink(missing_ok=True)

    def _force_close(self):
        """After a failed close HDF5 still holds the file and retries at exit (where a full disk crashes it)."""
        for _ in range(3):
            try:
                with _h5_write_errors():
                    if self.f.id.valid:
                        self.f.id.close()
                return
            except (WriteFailed, ValueError):
                continue

    def prepare(self, split, infos, chunk_bytes: int = 1 << 20) -> int:
        """Create the split's labels, ids and one dataset per layer; return the first row to compute.

        ``split`` is a :class:`features.data.Split`; ``infos`` are :class:`features.layers.LayerInfo`.
        """
        with _h5_write_errors():
            return self._prepare(split, infos, chunk_bytes)

    def _prepare(self, split, infos, chunk_bytes):
        n = len(split)
        grp = self.f.require_group(split.name)
        if "labels" not in grp:
            grp.create_dataset("labels", data=split.labels, fletcher32=True)
            grp.create_dataset("ids", data=split.ids, fletcher32=True)
            grp.attrs.update({"n_total": n, "n_done": 0, "complete": False})
        elif grp["labels"].shape != (n,) or not np.array_equal(grp["labels"][()], split.labels):
            raise UserInputError(f"{self.path}:{split.name} holds other labels than the data set; "
                                 f"`transferlab cache rm {self.path}` and extract again")
        feats = grp.require_group("features")
        dtype = storage_dtype(_attr(self.f.attrs["dtype"]))
        pooling = _attr(self.f.attrs["pooling"])
        for i in infos:
            if i.name not in feats:
                rows = int(max(1, min(n, chunk_bytes // (i.dim * dtype.itemsize))))
                ds = feats.create_dataset(i.name, shape=(n, i.dim), maxshape=(None, i.dim), dtype=dtype,
                                          chunks=(rows, i.dim), fletcher32=True)
                ds.attrs.update({"depth": i.depth, "rel_depth": i.rel_depth, "raw_shape": list(i.raw_shape),
                                 "pooling": pooling, "n_done": 0, "complete": False})
        grp.attrs["complete"] = False
        self.f.flush()
        start = min(int(feats[i.name].attrs["n_done"]) for i in infos)
        self._committed[split.name] = start
        self._queue.pop(split.name, None)
        return start

    def write(self, split: str, start: int, rows: dict) -> int:
        """Queue rows ``start:start+B`` of each layer; commit the queue when it is due (see the
        integrity rule). Returns the split's committed end, the rows a kill now would keep.

        Raises :class:`WriteFailed` before writing when the folder lacks room for the queue (the file
        stays sound), or when HDF5 reports a failed write (the file may be damaged).
        """
        queue = self._queue.setdefault(split, _Queue(start, start, {name: [] for name in rows}))
        if start != queue.end or set(rows) != set(queue.parts):
            raise ValueError(f"rows {start}.. of {sorted(rows)} do not continue the queue of {split!r} at {queue.end}")
        for name, arr in rows.items():
            queue.parts[name].append(arr)
            queue.nbytes += arr.nbytes
        queue.end = start + (next(iter(rows.values())).shape[0] if rows else 0)
        if time.monotonic() - self._last_commit >= COMMIT_SECONDS or queue.nbytes >= COMMIT_BYTES:
            return self.commit(split)
        return self._committed.get(split, queue.start)

    def commit(self, split: str) -> int:
        """Write the split's queued rows, flush, raise ``n_done``, flush; returns the committed end."""
        queue = self._queue.pop(split, None)
        if queue is None:
            return self._committed.get(split, 0)
        start = queue.start
        rows = {name: arrs[0] if len(arrs) == 1 else np.concatenate(arrs) for name, arrs in queue.parts.items()}
        feats = self.f[split]["features"]
        need = METADATA_MARGIN + sum(max(a.nbytes, feats[n].chunks[0] * a[0].nbytes if len(a) else 0)
                                     for n, a in rows.items())
        free = free_bytes(self.path.parent)
        if free < need:
            raise WriteFailed(errno.ENOSPC, f"No space left on device ({free / 1e6:.1f} MB free, the next batch "
                                            f"needs {need / 1e6:.1f} MB)")
        try:
            with _h5_write_errors():
                end = self._write(split, start, rows)
        except WriteFailed:
            self.failed = True
            raise
        self._committed[split] = end
        self._last_commit = time.monotonic()
        return end

    def _write(self, split, start, rows):
        grp = self.f[split]
        feats = grp["features"]
        end = start
        for name, arr in rows.items():
            end = start + arr.shape[0]
            feats[name][start:end] = arr
        self.f.flush()  # rows on disk before n_done says so
        for name in rows:
            feats[name].attrs["n_done"] = end
        grp.attrs["n_done"] = min(int(d.attrs["n_done"]) for d in feats.values())
        self.f.flush()
        return end

    def finish(self, split: str, names) -> None:
        """Commit the queue, mark the layers complete (last), then the split's summary."""
        self.commit(split)
        with _h5_write_errors():
            grp = self.f[split]
            feats = grp["features"]
            for name in names:
                feats[name].attrs["complete"] = True
            self.f.flush()
            done = [int(d.attrs["n_done"]) for d in feats.values()]
            grp.attrs["n_done"] = min(done)
            grp.attrs["complete"] = all(bool(d.attrs["complete"]) for d in feats.values())
            self.f.flush()


def after_write_failure(path: Path, exc: BaseException, log=print) -> str:
    """Decide what a failed write leaves: a sound, resumable file, or one moved aside. Returns the message."""
    path = Path(path)
    marker = Path(str(path) + ".writing")
    problems = _verify(path) if path.exists() else []
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if problems:
        moved = quarantine(path)
        marker.unlink(missing_ok=True)
        return (f"writing {path} failed ({reason}); the file was left damaged and is moved aside to {moved.name}: "
                f"free space and rerun the same command to extract again")
    marker.unlink(missing_ok=True)
    return (f"writing {path} failed ({reason}); the rows written so far are kept and sound: "
            f"free space and rerun the same command to resume")


# --- status and management ------------------------------------------------------------------------

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


def _busy(exc: BaseException) -> bool:
    """Whether an HDF5 open failed only because another process holds the file (HDF5's own lock)."""
    return isinstance(exc, BlockingIOError) or getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK) \
        or "unable to lock file" in str(exc)


def read_status(path: "str | Path") -> dict | None:
    """Attributes and per-split status of a cache file, or None when it cannot be opened.

    A file another process holds open for writing (HDF5's own lock) is not "unreadable": that is a
    UserInputError saying so, never a reason to move the file aside.
    """
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            splits = {name: split_status(g) for name, g in f.items() if isinstance(g, h5py.Group)}
    except Exception as exc:  # truncated or damaged files raise OSError, KeyError, RuntimeError...
        if _busy(exc):
            raise UserInputError(f"{path} is being written by another process; wait for it to finish, then rerun") \
                from None
        return None
    return {"attrs": attrs, "splits": splits}


def layer_complete(split_st: dict | None, layer: str) -> bool:
    ls = (split_st or {}).get("layers", {}).get(layer)
    return ls is not None and ls["complete"] and ls["n_done"] == split_st["n_total"]


def is_complete(status: dict | None, splits, layers) -> bool:
    """Whether every named layer of every named split is finished work."""
    if not status:
        return False
    return all(layer_complete(status["splits"].get(s), layer) for s in splits for layer in layers)


def cache_files(cache_dir: "str | Path") -> list[Path]:
    """The ``*.h5`` files of a cache directory (folders so named are not files)."""
    d = Path(cache_dir)
    return sorted(p for p in d.glob(f"*{SUFFIX}") if p.is_file()) if d.is_dir() else []


def list_cache(cache_dir: "str | Path") -> list[dict]:
    """One row per cache file, part file (status ``part``) and foreign ``*.h5`` file (status ``foreign``)."""
    rows = []
    for p in cache_files(cache_dir) + part_files(cache_dir):
        row = {"file": str(p), "bytes": p.stat().st_size}
        why = foreign(p)
        if why:
            rows.append({**row, "status": "foreign", "why": why})
            continue
        owner = part_owner(p)
        try:
            with reading(owner or p, wait=0):
                st = read_status(p)
        except UserInputError:
            rows.append({**row, "status": "being written", "data": "(another process is writing it)",
                         "backbone": "-", "weights": "-", "image_size": "-", "pooling": "-", "dtype": "-",
                         "splits": {}, "layers": []})
            continue
        if owner is not None:
            m = _PART_NAME.fullmatch(p.name)
            row.update(status="part", part_of=owner.name, rank=int(m["rank"]), world=int(m["world"]))
            if st is not None:
                row["splits"] = {k: v["n_done"] for k, v in st["splits"].items()}
        elif st is None:
            row.update(status="unreadable")
        else:
            a = st["attrs"]
            complete = all(s["complete"] for s in st["splits"].values()) and bool(st["splits"])
            splits = st["splits"].values()
            layers = sorted({l for s in splits for l in s["layers"]},
                            key=lambda l: min(s["layers"].get(l, {}).get("depth", 1 << 30) for s in splits))
            row.update(status="complete" if complete else "partial", data=a.get("data"), backbone=a.get("backbone"),
                       weights=a.get("weights"), image_size=a.get("image_size"), pooling=a.get("pooling"),
                       dtype=a.get("dtype"), splits={k: v["n_total"] for k, v in st["splits"].items()},
                       layers=layers)
        rows.append(row)
    return rows


def _unwritten_chunk(ds: h5py.Dataset, n_done: int) -> int | None:
    """First row of a chunk holding finished rows that HDF5 never wrote (reads back as zeros), or None."""
    if not ds.chunks or n_done <= 0:
        return None
    step = ds.chunks[0]
    for start in range(0, n_done, step):
        if ds.id.get_chunk_info_by_coord((start,) + (0,) * (ds.ndim - 1)).byte_offset is None:
            return start
    return None


def verify(path: "str | Path") -> list[str]:
    """Read every byte of a cache file; return the problems found (empty list: the file is sound).

    Checks the root attributes, every split's labels and ids, and for every layer: its shape, that
    ``n_done``/``complete`` agree, that every chunk holding finished rows was written, and that every
    row reads back (fletcher32) as finite numbers. A file another process is writing is not read
    (it would look damaged half-way through a batch): that is reported instead.
    """
    if not Path(path).is_file():
        return [f"{path}: no such file"]
    try:
        with reading(path, wait=0):
            return _verify(path)
    except UserInputError:
        return [f"{path}: being written by another process; verify it when that has finished"]


def _verify(path: "str | Path") -> list[str]:
    """:func:`verify` without taking the lock (for a writer that holds it)."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        if _busy(exc):
            return [f"{path}: being written by another process; verify it when that has finished"]
        return [f"{path}: cannot be opened as HDF5 ({_short(exc)}); it is truncated or damaged: "
                f"`transferlab cache rm {path}` and extract again"]
    fix = f"`transferlab cache rm {path}` and extract again"
    with f:
        try:
            for k in ROOT_ATTRS:
                if k not in f.attrs:
                    problems_root = f"{path}: root attribute '{k}' missing"
                    return [problems_root]
            names = list(f.keys())
        except Exception as exc:
            return [f"{path}: the file's index is damaged ({_short(exc)}): {fix}"]
        problems = []
        for split in names:
            where = f"{path}:{split}"
            try:
                grp = f.get(split)
                if not isinstance(grp, h5py.Group):
                    problems.append(f"{where} is damaged (not a readable group): {fix}")
                    continue
                n_total = int(grp.attrs["n_total"])
                for name in ("labels", "ids"):
                    arr = grp[name][()]
                    if arr.shape != (n_total,):
                        problems.append(f"{where}/{name} has shape {arr.shape}, expected ({n_total},)")
                n_done_split = int(grp.attrs.get("n_done", 0))
                layer_done = []
                feats = grp.get("features")
                for lname in list(feats.keys()) if feats is not None else []:
                    lwhere = f"{where}/features/{lname}"
                    try:
                        ds = feats.get(lname)
                        if not isinstance(ds, h5py.Dataset):
                            problems.append(f"{lwhere} is damaged (not a readable dataset): {fix}")
                            continue
                        n_done = int(ds.attrs.get("n_done", 0))
                        layer_done.append(n_done)
                        if ds.ndim != 2 or ds.shape[0] != n_total:
                            problems.append(f"{lwhere} has shape {ds.shape}, expected ({n_total}, D)")
                            continue
                        if bool(ds.attrs.get("complete", False)) and n_done != n_total:
                            problems.append(f"{lwhere} is marked complete at {n_done}/{n_total} rows")
                        hole = _unwritten_chunk(ds, min(n_done, n_total))
                        if hole is not None:
                            problems.append(f"{lwhere} claims {n_done} rows but the chunk at row {hole} was never "
                                            f"written (a failed write): {fix}")
                            continue
                        step = max(1, ds.chunks[0] if ds.chunks else n_total) * 16
                        for s in range(0, ds.shape[0], step):
                            block = ds[s:min(ds.shape[0], s + step)]
                            if s < n_done and not np.isfinite(block[:max(0, n_done - s)]).all():
                                problems.append(f"{lwhere} holds non-finite values near row {s}")
                                break
                    except Exception as exc:
                        problems.append(f"{lwhere} is damaged ({_short(exc)}): {fix}")
                if layer_done and n_done_split > min(layer_done):
                    problems.append(f"{where} claims n_done={n_done_split} but a layer has only {min(layer_done)}")
                if bool(grp.attrs.get("complete", False)) and (n_done_split != n_total or not layer_done):
                    problems.append(f"{where} is marked complete at {n_done_split}/{n_total} rows")
            except Exception as exc:
                problems.append(f"{where} is damaged ({_short(exc)}): {fix}")
        try:  # every split holds the same layers (a layer missing from one split is damage)
            per_split = {n: set(f[n]["features"].keys()) for n in names
                         if isinstance(f.get(n), h5py.Group) and "features" in f[n]}
            every = set().union(*per_split.values()) if per_split else set()
            for n, have in per_split.items():
                for lname in sorted(every - have):
                    problems.append(f"{path}:{n} lacks layer {lname} that other splits hold: "
                                    f"rerun `transferlab extract` with that layer to add it")
        except Exception as exc:
            problems.append(f"{path}: the file's index is damaged ({_short(exc)}): {fix}")
    return problems


def foreign(path: "str | Path") -> str | None:
    """Why ``path`` is not one of the cache's own files, or None when it is (the *Removal* rule above).

    Reads the root attributes only; takes no lock and writes nothing beside the file.
    """
    p = Path(path)
    if not p.is_file():
        return "not a regular file" if p.exists() else "no such file"
    named = bool(_CACHE_NAME.fullmatch(p.name) or _PART_NAME.fullmatch(p.name))
    try:
        with h5py.File(p, "r") as f:
            attrs = set(f.attrs)
    except Exception as exc:
        if _busy(exc):  # open for writing elsewhere: ours while one of our writers marks it
            return None if Path(str(p) + ".writing").exists() else "held open for writing by another program"
        return None if named else "not an HDF5 file"
    if set(ROOT_ATTRS) <= attrs or (named and not attrs):
        return None
    return "an HDF5 file without the cache's root attributes"


def _removable(p: Path) -> Path:
    if not (p.name.endswith(SUFFIX) or part_owner(p) is not None):
        raise UserInputError(f"{p} is not a cache file (*.h5); `transferlab cache ls` lists them")
    if not p.exists():
        raise UserInputError(f"{p} does not exist; `transferlab cache ls` lists the cache files")
    why = foreign(p)
    if why:
        raise UserInputError(f"{p} is not a cache file ({why}); `transferlab cache rm` removes only what "
                             f"`transferlab extract` wrote, so it was left as it is")
    return p


def remove(paths) -> list[Path]:
    """Remove cache and part files with their marker and lock; a path that is not one refuses all, before any."""
    paths = [_removable(Path(p)) for p in paths]
    from filelock import Timeout

    removed = []
    # parts first, each under its cache file's lock; the cache file's own removal then deletes that lock
    for p in sorted(paths, key=lambda q: part_owner(q) is None):
        owner = part_owner(p) or p
        try:
            with locked(owner, timeout=10):
                p.unlink(missing_ok=True)
                Path(str(p) + ".writing").unlink(missing_ok=True)
        except Timeout:
            raise UserInputError(f"{owner} is in use by another process (extracting into it or reading it); "
                                 f"rerun `transferlab cache rm` when it has finished") from None
        if not owner.exists():
            Path(str(owner) + ".lock").unlink(missing_ok=True)
        removed.append(p)
    return removed


def remove_all(cache_dir: "str | Path") -> tuple[list[Path], list[tuple[Path, str]]]:
    """Remove every cache and part file of a directory; return those removed and ``(path, why)`` of those left."""
    d = Path(cache_dir)
    found = sorted(d.glob(f"*{SUFFIX}")) + part_files(d) if d.is_dir() else []
    checked = [(p, foreign(p)) for p in found]
    return remove([p for p, why in checked if not why]), [(p, why) for p, why in checked if why]


def quarantine(path: Path) -> Path:
    """Move an unreadable cache file aside (never delete what the user had)."""
    target = path.with_name(path.name + f".damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    Path(str(path) + ".writing").unlink(missing_ok=True)
    return target


# --- reading finished work ------------------------------------------------------------------------

@contextmanager
def _open(features_file):
    """The cache file opened for reading under the shared lock (waits while another process writes it)."""
    path = os.fspath(features_file)
    if not os.path.isfile(path):
        raise UserInputError(f"features file {path} does not exist: run `transferlab extract` first, "
                             "or pass the path it printed")
    with reading(path):
        try:
            f = h5py.File(path, "r")
        except Exception as exc:
            if _busy(exc):
                raise UserInputError(f"features file {path} is being written by another process; wait for it to "
                                     "finish, then rerun") from None
            raise UserInputError(f"features file {path} is not a readable HDF5 cache ({_short(exc)}): "
                                 f"`transferlab cache verify {path}` says why; rebuild it with `transferlab extract`") \
                from None
        with f:
            yield f


def read_cache_meta(features_file) -> dict:
    """Root attributes of a cache as plain Python values (JSON ones decoded), plus ``path`` and ``splits``.

    Examples
    --------
    >>> read_cache_meta("data/cache/digits_lite0_....h5")["image_size"]  # doctest: +SKIP
    64
    """
    with _open(features_file) as f:
        meta = {k: _attr(v) for k, v in f.attrs.items()}
        meta["splits"] = [name for name in f if isinstance(f[name], h5py.Group)]
    for key in ("versions", "class_names", "catalog"):
        if isinstance(meta.get(key), str):
            try:
                meta[key] = json.loads(meta[key])
            except json.JSONDecodeError:
                pass
    meta["path"] = os.path.abspath(os.fspath(features_file))
    return meta


def read_spec(features_file) -> ExtractionSpec:
    """The resolved extraction spec stored in a cache file."""
    return ExtractionSpec.from_dict(read_cache_meta(features_file))


def _split_group(f: h5py.File, split: str) -> h5py.Group:
    if split not in f or not isinstance(f[split], h5py.Group):
        present = ", ".join(n for n in f if isinstance(f[n], h5py.Group)) or "none"
        raise UserInputError(f"split {split!r} is not in {f.filename} (splits: {present}): {_RERUN}")
    return f[split]


def _layers(group: h5py.Group) -> list[str]:
    if "features" not in group:
        return []
    feats = group["features"]
    names = []
    feats.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names, key=lambda n: (int(feats[n].attrs.get("depth", 1 << 30)), n))


def list_layers(features_file, split: str = "train") -> list[str]:
    """Layer names stored for a split, in depth order (generic to specialised).

    Examples
    --------
    >>> list_layers("cache/digits-lite0.h5")  # doctest: +SKIP
    ['blocks.0', 'blocks.1', 'blocks.2', 'bn2']
    """
    with _open(features_file) as f:
        return _layers(_split_group(f, split))


def _layer_dataset(f, split, layer, finished=True) -> h5py.Dataset:
    group = _split_group(f, split)
    if ("features" not in group or layer not in group["features"]
            or not isinstance(group["features"][layer], h5py.Dataset)):
        valid = _layers(group)
        listing = ", ".join(valid) if valid else "none: extract some layers first"
        raise UserInputError(f"layer {layer!r} is not in split {split!r} of {f.filename}; valid layers: {listing} "
                             f"(`transferlab extract --layers {layer}` adds it)")
    ds = group["features"][layer]
    if ds.ndim != 2:
        raise UserInputError(f"layer {layer!r} of {f.filename} has shape {ds.shape}, not (rows, dims): "
                             "rebuild the cache with `transferlab extract`")
    if finished:
        n_total = int(group.attrs.get("n_total", -1))
        n_done = int(ds.attrs.get("n_done", -1))
        if not bool(ds.attrs.get("complete", False)) or n_done != n_total:
            raise UserInputError(f"layer {layer!r} of split {split!r} in {f.filename} is incomplete "
                                 f"({n_done}/{n_total} rows done): {_RERUN}")
    return ds


def layer_info(features_file, layer: str, split: str = "train") -> dict:
    """``{"layer", "depth", "rel_depth", "dim", "dtype", "pooling", "raw_shape"}`` of one stored layer."""
    with _open(features_file) as f:
        ds = _layer_dataset(f, split, layer, finished=False)
        return {"layer": layer, "depth": int(ds.attrs.get("depth", -1)),
                "rel_depth": float(ds.attrs.get("rel_depth", float("nan"))), "dim": int(ds.shape[1]),
                "dtype": str(ds.dtype), "pooling": _attr(ds.attrs.get("pooling")),
                "raw_shape": _attr(ds.attrs.get("raw_shape"))}


def load_split(features_file, split: str, layer: str):
    """Features, labels and sample ids of one finished split and layer.

    Returns
    -------
    X : ndarray of float32, shape (N, D)
    y : ndarray of int64, shape (N,)
    ids : ndarray of int64, shape (N,)
    """
    with _open(features_file) as f:
        ds = _layer_dataset(f, split, layer)
        group = f[split]
        if "labels" not in group:
            raise UserInputError(f"split {split!r} of {f.filename} has no labels: {_RERUN}")
        try:
            y = np.asarray(group["labels"][()], dtype=np.int64)
            ids = np.asarray(group["ids"][()], dtype=np.int64) if "ids" in group else np.arange(y.size, dtype=np.int64)
            if ds.shape[0] != y.size or ids.size != y.size:
                raise UserInputError(f"layer {layer!r} of split {split!r} in {f.filename} has {ds.shape[0]} rows "
                                     f"for {y.size} labels: {_RERUN}")
            X = np.asarray(ds[()], dtype=np.float32)
        except (OSError, RuntimeError, KeyError) as exc:  # fletcher32 mismatch: "filter returned failure"
            raise UserInputError(
                f"layer {layer!r} of split {split!r} in {f.filename} is damaged ({_short(exc)}): "
                f"`transferlab cache verify {f.filename}` lists the damage; `transferlab cache rm {f.filename}` "
                "and extract again to rebuild it") from None
    return X, y, ids


@contextmanager
def open_layers(features_file, split: str, layers):
    """Yield ``(ids, {layer: h5py.Dataset})`` of finished layers of one split, to read slices of a large file.

    The datasets are valid inside the ``with`` block only; incomplete layers raise UserInputError.
    """
    with _open(features_file) as f:
        datasets = {name: _layer_dataset(f, split, name) for name in layers}
        yield np.asarray(f[split]["ids"][()], dtype=np.int64), datasets
