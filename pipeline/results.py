"""The sweep's results table: one row per (backbone, weights, pooling, size, layer, head, shots, repeat).

``results.csv`` (the interface contract) has at least ``backbone, weights, layer, depth, dim, head,
val_accuracy, test_accuracy, fit_seconds``; the extra columns make a row self-describing. End-to-end
fine-tuning rows use ``head = finetune:MODE``.

A row's key
-----------
``row_key`` is a SHA-256 over everything that decides the row: the feature cache's key (data
fingerprint, backbone architecture, weights fingerprint, image size, resize, mean, std, pooling,
dtype), the layer, the head with its preprocessing and grid, the validation fraction, shots,
repeat and seed (for a fine-tuning row: its whole configuration key, which includes the data
fingerprint). A rerun skips exactly the rows whose key it would compute again.

Integrity rule of ``results.csv``
---------------------------------
- *Complete*: a row is finished work when its line is whole (appended in one write, then flushed
  and fsynced); the file is the set of such rows under one header.
- *Stale*: a row whose key is not among the keys of the sweep being run (other data, other weights
  file, other grid...) is never shown as current: :func:`set_aside` moves it to
  ``results.stale.csv`` (appended the same way) and rewrites ``results.csv`` atomically without it.
  Fine-tuning rows stay while their data fingerprint is the sweep's.
- *Crash*: a kill during an append can leave a torn last line; a torn line has too few fields or
  no ``row_key`` and is treated as stale, so its fit runs again.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from transferlab.util import atomic_write, sha256_json

RESULT_COLUMNS = [
    "backbone", "weights", "pool", "image_size", "layer", "depth", "rel_depth", "dim", "head", "preprocessing",
    "params", "shots", "repeat", "seed", "val_accuracy", "test_accuracy", "fit_seconds", "n_train", "n_val",
    "selection", "notes", "data", "data_fingerprint", "cache_key", "cache_file", "grid", "val_fraction", "row_key",
]
STALE_FILE = "results.stale.csv"


def row_key(**decides) -> str:
    """Key of a row from the values that decide it (see the module docstring)."""
    return sha256_json({k: ("" if v is None else v) for k, v in decides.items()})


def read_rows(path: "str | Path") -> list[dict]:
    """The rows of a results file; a torn line (a field missing) comes back without a ``row_key``."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if None in r.values() or None in r:  # fewer or more fields than the header: torn
            r.pop(None, None)
            r["row_key"] = ""
    return rows


def append_row(path: "str | Path", row: dict) -> None:
    """Append one row (unknown keys dropped, missing ones empty), writing the header first if new."""
    path = Path(path)
    new = not path.is_file() or path.stat().st_size == 0
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", restval="")
    if new:
        w.writeheader()
    w.writerow(row)
    with open(path, "a", newline="") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())


def write_rows(path: "str | Path", rows: list[dict]) -> None:
    """Replace a results file with ``rows`` atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue())


def set_aside(path: "str | Path", keep) -> list[dict]:
    """Move the rows of ``path`` for which ``keep(row)`` is false to ``results.stale.csv``; return them."""
    path = Path(path)
    rows = read_rows(path)
    stale = [r for r in rows if not keep(r)]
    if stale:
        for r in stale:
            append_row(path.with_name(STALE_FILE), r)
        write_rows(path, [r for r in rows if keep(r)])
    return stale
