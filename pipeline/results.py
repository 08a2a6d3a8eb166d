"""The sweep's results table: one row per (backbone, weights, pooling, size, layer, head, shots, repeat).

``results.csv`` (the interface contract) has at least ``backbone, weights, layer, depth, dim, head,
val_accuracy, test_accuracy, fit_seconds``; the extra columns make a row self-describing. End-to-end
fine-tuning rows use ``head = finetune:MODE``.

A row's key
-----------
``row_key`` is a SHA-256 over everything that decides the row: the feature cache's key (data
fingerprint, backbone architecture, weights fingerprint, image size, resize, mean, std, pooling,
dtype), the layer, the head with its preprocessing and grid, the validation fraction, shots,
repeat and seed (:meth:`ProbeSettings.key`; for a fine-tuning row: its whole configuration key,
which includes the data fingerprint). A rerun skips exactly the rows whose key it would compute again.

Integrity rule of ``results.csv``
---------------------------------
- *Complete*: a row is finished work when its line is whole; the file is the set of such rows
  under one header. An append is all-or-nothing: the line is written with one ``os.write`` on a
  descriptor opened for appending, then fsynced; when the write fails (a full disk) the file is
  truncated back to its size before the append, so no part of the row stays.
- *Current*: a probe row stays in ``results.csv`` while its key is still valid, whatever heads,
  layers, shots or repeats the sweep being run asks for: its own cache key is one of the sweep's
  feature configurations and its key, computed again from its own layer, head, shots and repeat
  with the sweep's preprocessing, grid, validation fraction and seed, is its ``row_key``
  (:func:`why_not_current`). Rows of other backbones, weights, pooling or sizes are set aside: a key
  can be checked only against features the sweep computes. A fine-tuning row stays while its data
  fingerprint is the sweep's.
- *Stale*: any other row (other data, features the sweep does not compute, another grid, seed...)
  is never shown as current: :func:`reconcile` moves it to ``results.stale.csv`` (appended the
  same way) and rewrites ``results.csv`` atomically without it, and the sweep's note names what
  changed. A stale row comes back only when its full key is valid again (the same test): it is
  taken back into ``results.csv`` instead of refitted, and removed from ``results.stale.csv``.
  The order (append to the stale file, rewrite ``results.csv``, rewrite the stale file) keeps
  every row in at least one of the two files whatever step a crash stops at.
- *Crash*: a kill -9 or a power loss during an append can leave a torn last line (no newline).
  The next append first cuts the file back to its last whole line (:func:`append_row` says so),
  so a torn line is never glued to the next row; a reader treats a line with too few or too many
  fields, a last line without its newline, or no ``row_key``, as torn, hence stale (never taken
  back), so its fit runs again.
- *Concurrency*: everything that writes an ``--out`` folder holds ``<out>/.transferlab.lock``
  (:func:`locked_out`): a second sweep (or ``finetune --append-to``) into the same folder waits,
  saying so, and then finds the first one's rows done instead of appending them again.

Results as data
---------------
:func:`typed_rows` and :func:`rows_frame` read the rows with their types (the CSV holds strings):
numbers as ``int``/``float`` (an empty cell: None; in the DataFrame NaN, ``<NA>`` in its ``Int64``
columns), ``params`` as a dict, ``shots`` as an integer with ``0`` for all training examples
(:data:`ALL_SHOTS`: ``--shots`` takes positive numbers only, and a row's key writes all-data as 0
too), and in the DataFrame ``layer`` as an ordered categorical by depth. The column ``head`` keeps
its CSV name: ``df["head"]`` is the column, ``df.head()`` stays the pandas method.
"""
from __future__ import annotations

import csv
import io
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transferlab.classifiers.names import MULTI_HEAD
from transferlab.features.locks import exclusive_folder
from transferlab.util import UserInputError, atomic_write, sha256_json, slug

from .curves import best_on_validation, is_finetune

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
    """The rows of a results file; a torn line (a field missing or extra, or the last line cut before its
    newline, its ``row_key`` perhaps cut short) comes back without a ``row_key``."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        text = fh.read()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    for r in rows:
        if None in r.values() or None in r:  # fewer or more fields than the header: torn
            r.pop(None, None)
            r["row_key"] = ""
    if rows and not text.endswith("\n"):
        rows[-1]["row_key"] = ""
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


@dataclass(frozen=True)
class ProbeSettings:
    """What a sweep (or ``train``) applies to every probe row alike; the rest of a row's key is the row's own."""

    preprocessing: str | None
    grid: str  # "default" or "full"
    val_fraction: float
    seed: int

    def key(self, cache_key: str, layer: str, head: str, shots: int, repeat: int) -> str:
        """The ``row_key`` of one probe row (``shots`` 0: all training examples; repeat ``r`` uses seed + r)."""
        return row_key(cache_key=cache_key, layer=layer, head=head, preprocessing=self.preprocessing, grid=self.grid,
                       val_fraction=self.val_fraction, shots=shots, repeat=repeat, seed=self.seed + repeat)


@dataclass(frozen=True)
class CurrentRun:
    """What a row is judged against: the data, the features each (backbone, weights, pool, size) gives
    (their cache keys) and the probe settings of the sweep being run."""

    data: str
    fingerprint: str
    features: dict  # (backbone, weights, pool, image size as str) -> cache key
    settings: ProbeSettings


def _int(v, default=0) -> int:
    return default if v in ("", None) else int(float(v))


def multi_key_layer(candidates) -> str:
    """The ``layer`` a multi-layer row's key is made of: the candidate layers it chose from (its ``layer``
    column holds the chosen ones, its ``params`` the candidates)."""
    return ",".join(candidates)


def key_layer(row: dict) -> str:
    """The layer field of ``row``'s key: its layer, or a multi-layer row's candidates (:func:`multi_key_layer`)."""
    if row.get("head") == MULTI_HEAD:
        params = row.get("params")
        params = json.loads(params) if isinstance(params, str) and params else params or {}
        return multi_key_layer(params.get("candidates", []))
    return row["layer"]


def why_not_current(row: dict, now: CurrentRun) -> str | None:
    """None when ``row`` is valid for ``now`` (see *Current* in the module docstring), else what changed, in words."""
    if not row.get("row_key"):
        return "torn (a run killed while appending)"
    if row.get("data_fingerprint") != now.fingerprint:
        if row.get("data") != now.data:
            return f"other data (--data {row.get('data')}, now {now.data})"
        return (f"the data changed (--data {now.data}: fingerprint {str(row.get('data_fingerprint'))[:12]}, now "
                f"{now.fingerprint[:12]}; files added, removed or changed, or --fingerprint)")
    if is_finetune(row.get("head")):
        return None
    spec = (row.get("backbone"), row.get("weights"), row.get("pool"), str(row.get("image_size")))
    if spec not in now.features:
        flags = [f"--{flag} {spec[i]}" for i, flag in enumerate(("backbone", "weights", "pool", "image-size"))
                 if spec[i] not in {s[i] for s in now.features}]
        return f"features this sweep does not compute ({', '.join(flags) or 'that combination of ' + '/'.join(spec)})"
    if now.features[spec] != row.get("cache_key"):
        return f"the features of {spec[0]}/{spec[1]} changed (--dtype, or the weights file's content)"
    s = now.settings
    try:
        shots, repeat = _int(row.get("shots")), _int(row.get("repeat"))
        if s.key(row["cache_key"], key_layer(row), row["head"], shots, repeat) == row["row_key"]:
            return None
        if row.get("grid") != s.grid:
            return f"another grid (--full-grid: {row.get('grid')}, now {s.grid})"
        if float(row.get("val_fraction")) != float(s.val_fraction):
            return f"another --val-fraction ({row.get('val_fraction')}, now {s.val_fraction})"
        if _int(row.get("seed")) - repeat != s.seed:
            return f"another --seed ({_int(row.get('seed')) - repeat}, now {s.seed})"
    except (KeyError, TypeError, ValueError):
        return "unreadable (a field of its key is not a number)"
    return f"another --preprocessing (now {s.preprocessing or 'per head'})"


def reconcile(path: "str | Path", why_not) -> tuple[list[tuple[dict, str]], list[dict]]:
    """Keep the rows of ``path`` for which ``why_not(row)`` is None; move the others to ``results.stale.csv``
    and take back from there the rows ``why_not`` accepts (one per key, the latest), unless ``path`` has it.

    Returns ``(moved, taken)``: the moved rows with their reasons, and the rows taken back. The order of
    the writes is the module docstring's (*Stale*).
    """
    path = Path(path)
    stale_path = path.with_name(STALE_FILE)
    verdicts = [(r, why_not(r)) for r in read_rows(path)]
    kept = [r for r, why in verdicts if why is None]
    moved = [(r, why) for r, why in verdicts if why is not None]
    have = {r["row_key"] for r in kept}
    old = read_rows(stale_path)
    back = {r["row_key"]: r for r in old if r.get("row_key") and r["row_key"] not in have and why_not(r) is None}
    for r, _ in moved:
        append_row(stale_path, r)
    if moved or back:
        write_rows(path, kept + list(back.values()))
    gone = have | set(back)
    if any(r.get("row_key") in gone for r in old):
        write_rows(stale_path, [r for r in read_rows(stale_path) if r.get("row_key") not in gone])
    return moved, list(back.values())


def moved_note(moved: list[tuple[dict, str]], path: "str | Path") -> str:
    """One line saying which rows left ``path`` for ``results.stale.csv`` and why (each reason with its count)."""
    path = Path(path)
    reasons: dict = {}
    for _, why in moved:
        reasons[why] = reasons.get(why, 0) + 1
    return (f"note: moved {len(moved)} row(s) of {path} to {path.with_name(STALE_FILE)}: "
            + "; ".join(f"{n} {why}" for why, n in reasons.items()))


# --- results in Python -----------------------------------------------------------------------------

ALL_SHOTS = 0
"""``shots`` of a row trained on all its training examples, in :func:`typed_rows` and :func:`rows_frame`."""
INT_COLUMNS = ("depth", "dim", "repeat", "seed", "n_train", "n_val", "image_size", "shots")
FLOAT_COLUMNS = ("rel_depth", "val_accuracy", "test_accuracy", "fit_seconds", "val_fraction")
NUMERIC_COLUMNS = INT_COLUMNS + FLOAT_COLUMNS


def _typed(column: str, value):
    if column == "params":
        try:
            params = json.loads(value) if isinstance(value, str) and value else value
        except ValueError:
            return {}
        return params if isinstance(params, dict) else {}
    if column not in NUMERIC_COLUMNS:
        return value
    if value in ("", None):
        return ALL_SHOTS if column == "shots" else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if column in INT_COLUMNS and number.is_integer() else number


def typed_rows(rows: list[dict]) -> list[dict]:
    """``results.csv`` rows with their types (see *Results as data* in the module docstring)."""
    return [{k: _typed(k, v) for k, v in r.items()} for r in rows]


def rows_frame(rows: list[dict]):
    """Rows as a pandas DataFrame: typed as :func:`typed_rows` says, integer columns as ``Int64`` (an empty
    cell: ``<NA>``), float columns as floats (NaN), ``layer`` an ordered categorical by depth (ties: relative
    depth, then first seen), so ``groupby("layer")`` and ``sort_values("layer")`` go from stem to head."""
    import pandas as pd

    columns = list(dict.fromkeys([*RESULT_COLUMNS, *(k for r in rows for k in r)]))
    df = pd.DataFrame(typed_rows(rows), columns=columns)
    for c in INT_COLUMNS:
        df[c] = pd.array(df[c].tolist(), dtype="Int64") if len(df) else pd.array([], dtype="Int64")
    for c in FLOAT_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    by_depth = (df.assign(_order=range(len(df))).groupby("layer", sort=False)
                .agg(depth=("depth", "min"), rel=("rel_depth", "min"), first=("_order", "min")))
    order = by_depth.sort_values(["depth", "rel", "first"], na_position="last").index
    df["layer"] = pd.Categorical(df["layer"], categories=list(order), ordered=True)
    return df


class SweepResult:
    """What :func:`transferlab.sweep` returns and :func:`load_results` reads back.

    Attributes
    ----------
    rows : pandas.DataFrame
        One row per (backbone, weights, pooling, size, layer, head, shots, repeat) and per appended
        fine-tuning run, typed (:func:`rows_frame`): accuracies and depths as numbers, ``layer`` an
        ordered categorical by depth, ``params`` a dict, ``shots`` an ``Int64`` with 0 for all training
        examples. The column ``head`` is ``rows["head"]`` (``rows.head()`` is the pandas method).
    recommendation : dict or None
        The sweep's decision (:func:`transferlab.pipeline.decision.decide` on its rows: ``strategy``,
        ``runner_up``, ``close``, ``reasons``, ``facts``, ``thresholds``); None when the rows hold no
        validation accuracies to decide on.
    config, timing, cache_files, class_names : the run's configuration and bookkeeping.
    summary : dict
        The ``results.json`` content, rows as ``results.csv`` holds them (strings). ``result["rows"]``
        gives them typed (:func:`typed_rows`); the other keys are read from ``summary`` as they are.

    Examples
    --------
    >>> res = transferlab.sweep(data="digits", heads="logreg")                     # doctest: +SKIP
    >>> res.rows.groupby("layer", observed=True).test_accuracy.mean()               # doctest: +SKIP
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
        return typed_rows(self.summary["rows"]) if key == "rows" else self.summary[key]

    def get(self, key, default=None):
        return self[key] if key in self.summary else default

    def __contains__(self, key) -> bool:
        return key in self.summary

    def keys(self):
        return self.summary.keys()

    def __repr__(self) -> str:
        return (f"SweepResult({len(self.summary.get('rows', []))} rows, data={self.config.get('data')!r}, "
                f"out={str(self.out) if self.out else None!r})")


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
