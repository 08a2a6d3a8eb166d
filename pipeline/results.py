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
- *Complete*: a row is finished work when its line is whole; the file is the set of such rows
  under one header. An append is all-or-nothing: the line is written with one ``os.write`` on a
  descriptor opened for appending, then fsynced; when the write fails (a full disk) the file is
  truncated back to its size before the append, so no part of the row stays.
- *Stale*: a row whose key is not among the keys of the sweep being run (other data, other weights
  file, other grid...) is never shown as current: :func:`set_aside` moves it to
  ``results.stale.csv`` (appended the same way) and rewrites ``results.csv`` atomically without it.
  Fine-tuning rows stay while their data fingerprint is the sweep's.
- *Crash*: a kill -9 or a power loss during an append can leave a torn last line (no newline).
  The next append first cuts the file back to its last whole line (:func:`append_row` says so),
  so a torn line is never glued to the next row; a reader treats a line with too few or too many
  fields, or no ``row_key``, as torn, hence stale, so its fit runs again.
- *Concurrency*: everything that writes an ``--out`` folder holds ``<out>/.transferlab.lock``
  (:func:`locked_out`): a second sweep (or ``finetune --append-to``) into the same folder waits,
  saying so, and then finds the first one's rows done instead of appending them again.
"""
from __future__ import annotations

import csv
import io
import os
from contextlib import contextmanager
from pathlib import Path

from transferlab.features.locks import exclusive
from transferlab.util import UserInputError, atomic_write, sha256_json

RESULT_COLUMNS = [
    "backbone", "weights", "pool", "image_size", "layer", "depth", "rel_depth", "dim", "head", "preprocessing",
    "params", "shots", "repeat", "seed", "val_accuracy", "test_accuracy", "fit_seconds", "n_train", "n_val",
    "selection", "data", "data_fingerprint", "cache_key", "cache_file", "grid", "val_fraction", "row_key",
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


def append_row(path: "str | Path", row: dict) -> bool:
    """Append one row (unknown keys dropped, missing ones empty), writing the header first if new.

    All-or-nothing (see the module docstring). Returns True when a torn last line left by a crash
    was cut off first.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        torn = False
        if size:
            os.lseek(fd, size - min(size, 1 << 16), os.SEEK_SET)
            tail = os.read(fd, min(size, 1 << 16))
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                size = size - len(tail) + cut + 1 if cut >= 0 else 0
                os.ftruncate(fd, size)
                torn = True
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", restval="")
        if size == 0:
            w.writeheader()
        w.writerow(row)
        data = buf.getvalue().encode()
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "No space left on device (short write)")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
    return torn


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


@contextmanager
def locked_out(out: "str | Path", log=print):
    """Hold ``<out>/.transferlab.lock`` while writing a results folder; wait, saying so, when held."""
    try:
        lock = exclusive(Path(out) / ".transferlab.lock", notify=log,
                         waiting=f"waiting: another process is writing results into {out} ...")
        lock.__enter__()
    except OSError as exc:
        raise UserInputError(f"cannot lock {out} ({exc.strerror or exc}); choose a writable --out") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
