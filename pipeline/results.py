"""The sweep's results table: one row per (backbone, weights, layer, head, shots, repeat).

``results.csv`` (CONTRACT.md) has at least ``backbone, weights, layer, depth, dim, head,
val_accuracy, test_accuracy, fit_seconds``; the extra columns make a row self-describing.
Rows are appended one at a time (and flushed), so an interrupted sweep keeps what it finished and
a rerun skips the rows already present. End-to-end fine-tuning rows use ``head = finetune:MODE``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

RESULT_COLUMNS = [
    "backbone", "weights", "pool", "image_size", "layer", "depth", "rel_depth", "dim", "head", "preprocessing", "params",
    "shots", "repeat", "seed", "val_accuracy", "test_accuracy", "fit_seconds", "n_train", "cache_file",
]
ROW_KEY = ("backbone", "weights", "pool", "image_size", "layer", "head", "shots", "repeat")


def row_key(row: dict) -> tuple:
    return tuple(str(row.get(k, "")) for k in ROW_KEY)


def read_rows(path: "str | Path") -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(path: "str | Path", row: dict) -> None:
    """Append one row (unknown keys dropped, missing ones empty), writing the header first if new."""
    path = Path(path)
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS, extrasaction="ignore", restval="")
        if new:
            w.writeheader()
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())
