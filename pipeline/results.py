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
import json
import os
from contextlib import contextmanager
from pathlib import Path

from transferlab.features.locks import exclusive_folder
from transferlab.util import UserInputError, atomic_write, sha256_json, slug

from .curves import best_on_validation

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


# --- results in Python -----------------------------------------------------------------------------

class SweepResult:
    """What :func:`transferlab.sweep` returns and :func:`load_results` reads back.

    Attributes
    ----------
    rows : pandas.DataFrame
        One row per (backbone, weights, pooling, size, layer, head, shots, repeat) and per appended
        fine-tuning run; accuracies and depths as numbers.
    recommendation : dict or None
        The sweep's decision (:func:`transferlab.pipeline.decision.decide` on its rows: ``strategy``,
        ``runner_up``, ``close``, ``reasons``, ``facts``, ``thresholds``); None when the rows hold no
        validation accuracies to decide on.
    config, timing, cache_files, class_names : the run's configuration and bookkeeping.
    summary : dict
        The ``results.json`` content; ``result["rows"]`` (a list of dicts) and the other keys are
        read from it, as when ``sweep`` returned that dict.

    Examples
    --------
    >>> res = transferlab.sweep(data="digits", heads="logreg")                     # doctest: +SKIP
    >>> res.rows.groupby("layer").test_accuracy.mean().sort_values().tail(3)        # doctest: +SKIP
    """

    def __init__(self, summary: dict, out: "str | Path | None" = None, recommendation=None):
        self.summary = summary
        self.out = None if out is None else Path(out)
        self.recommendation = summary.get("decision") if recommendation is None else recommendation

    @property
    def rows(self):
        return rows_frame(self.summary.get("rows", []))

    @property
    def config(self) -> dict:
        return self.summary.get("config", {})

    @property
    def timing(self) -> dict:
        return self.summary.get("timing", {})

    @property
    def cache_files(self) -> list:
        return self.summary.get("cache_files", [])

    @property
    def class_names(self) -> list:
        return self.summary.get("class_names", [])

    def __getitem__(self, key):
        return self.summary[key]

    def get(self, key, default=None):
        return self.summary.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self.summary

    def keys(self):
        return self.summary.keys()

    def __repr__(self) -> str:
        return (f"SweepResult({len(self.summary.get('rows', []))} rows, data={self.config.get('data')!r}, "
                f"out={str(self.out) if self.out else None!r})")


NUMERIC_COLUMNS = ("depth", "rel_depth", "dim", "repeat", "seed", "val_accuracy", "test_accuracy", "fit_seconds",
                   "n_train", "n_val", "image_size", "val_fraction", "shots")


def rows_frame(rows: list[dict]):
    """Rows as a pandas DataFrame, numeric columns as numbers (empty cells: NaN)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(dict.fromkeys([*RESULT_COLUMNS, *(k for r in rows for k in r)])))
    for c in NUMERIC_COLUMNS:
        if c in df:
            df[c] = pd.to_numeric(df[c].replace("", None), errors="coerce")
    return df


def load_results(out: "str | Path") -> SweepResult:
    """Read a finished sweep folder (``results.json`` + ``results.csv``) into a :class:`SweepResult`."""
    import json

    out = Path(out).expanduser()
    path = out / "results.json"
    if not path.is_file():
        raise UserInputError(f"{out} holds no finished sweep (no results.json); give the --out folder of a sweep")
    try:
        summary = json.loads(path.read_text())
    except ValueError as exc:
        raise UserInputError(f"{path} is not valid JSON ({exc}); rerun the sweep to rewrite it") from None
    summary["rows"] = read_rows(out / "results.csv")
    return SweepResult(summary, out)


# --- choosing from a sweep -------------------------------------------------------------------------

def resolve_train_target(features, layer: str, head: str) -> tuple[Path, str, str | None]:
    """``(cache file, layer, note)`` for ``train``: ``features`` may be a cache file or a sweep folder,
    ``layer`` a name or ``best`` (the layer the sweep's recommendation names, else the best on
    validation for ``head``)."""
    p = Path(features).expanduser()
    if not p.is_dir():
        if layer == "best":
            raise UserInputError("--layer best needs a sweep folder as --features (it reads the sweep's choice "
                                 "on validation accuracy), e.g. --features runs/sweep")
        return p, layer, None
    rows = [r for r in read_rows(p / "results.csv") if r.get("row_key") and r.get("cache_file")
            and not r.get("shots")]
    if not rows:
        raise UserInputError(f"{p} holds no sweep results (results.csv with probe rows); give a cache file "
                             f"(`transferlab cache ls`) or the --out folder of a sweep")
    mine = [r for r in rows if r["head"] == head]
    if not mine:
        raise UserInputError(f"the sweep in {p} has no '{head}' rows; its heads: "
                             f"{', '.join(sorted({r['head'] for r in rows}))}; pass one as --head")
    if layer == "best":
        decision = _stored_decision(p)
        curve = (decision or {}).get("curve") or {}
        at = [r for r in mine if r["layer"] == (decision or {}).get("chosen_layer")
              and r["cache_file"] == curve.get("cache_file")]
        b = best_on_validation(at or mine)
        said = (f"the recommended layer ({decision['strategy']}, see the report)" if at and decision.get("strategy")
                else "the best on validation")
        return (Path(b["cache_file"]), b["layer"],
                f"--layer best: {b['layer']} of {b['backbone']}/{b['weights']}, {said} "
                f"(validation accuracy {b['mean_val_accuracy']:.4f} with {head} in {p})")
    files = sorted({r["cache_file"] for r in mine if r["layer"] == layer})
    if not files:
        raise UserInputError(f"the sweep in {p} has no layer '{layer}'; its layers: "
                             f"{', '.join(dict.fromkeys(r['layer'] for r in mine))}, or best")
    if len(files) > 1:
        raise UserInputError(f"layer '{layer}' is in {len(files)} cache files of the sweep in {p} (several "
                             f"backbones, weights or sizes); give one as --features: {', '.join(files)}")
    return Path(files[0]), layer, None


def _stored_decision(folder: Path) -> dict | None:
    """The decision a sweep stored in ``results.json`` (JSON only), or None."""
    try:
        d = json.loads((folder / "results.json").read_text()).get("decision")
    except (OSError, ValueError, AttributeError):
        return None
    return d if isinstance(d, dict) else None


def default_head_dir(features, layer: str, head: str) -> Path:
    """``runs/heads/<cache file name without its key>_<layer>_<head>``: where ``train`` saves without ``--out``.

    Each ``_``-separated part is a :func:`transferlab.util.slug` (``blocks.3`` gives ``blocks-3``)."""
    stem = Path(features).stem
    base = stem.rsplit("_", 1)[0] if "_" in stem else stem
    return Path("runs") / "heads" / "_".join(slug(part, limit=None) for part in f"{base}_{layer}_{head}".split("_"))


@contextmanager
def locked_out(out: "str | Path", log=print):
    """Hold ``<out>/.transferlab.lock`` while writing a results folder; wait, saying so, when held. A run
    that created the lock file and wrote nothing (refused input) removes it again: the rule, and why it
    is safe for a waiting process, is in :mod:`transferlab.features.locks` (:func:`exclusive_folder`)."""
    try:
        lock = exclusive_folder(out, notify=log, waiting=f"waiting: another process is writing results into {out} ...")
        lock.__enter__()
    except OSError as exc:
        raise UserInputError(f"cannot lock {out} ({exc.strerror or exc}); choose a writable --out") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)
