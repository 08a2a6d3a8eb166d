"""Small things every stage needs, in one place: the user-error type, file hashes, file-name parts, atomic writes,
versions, the thread count for a busy machine.

Integrity rule of :func:`atomic_write` (used for every JSON, joblib and torch file the tool writes
whole): the bytes go to a temporary file in the same folder, are flushed and fsynced, and only then
``os.replace`` d onto the target. A crash or a full disk at any moment leaves either the old file or
the new one, never a mix; the temporary file is removed on an error, and one left by a kill -9 is
named ``.<name>.<random>.tmp`` (hidden, never read as a result).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path


class UserInputError(ValueError):
    """Bad input from the user: the message names the input and the fix.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback.
    Library code raises it only for problems the user can correct (paths, names, values),
    never for internal bugs.
    """


def sha256_file(path: "str | Path", chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj) -> str:
    """Hex SHA-256 of a JSON-able object in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()


def slug(text, limit: int | None = 40) -> str:
    """``text`` as a part of a file name: letters and digits (any script) and ``-`` kept, any other
    character (``_``, ``.``, ``/``, spaces...) a ``-``, no ``-`` at either end, cut at ``limit`` characters.

    Cache file names are made of these parts (:func:`transferlab.features.cache.file_name`): changing
    the rule renames every existing cache file, whose features would then be computed again."""
    kept = "".join(c if c.isalnum() or c == "-" else "-" for c in str(text)).strip("-")
    return kept[:limit] if limit is not None else kept


def atomic_write(path: "str | Path", data) -> Path:
    """Write ``data`` (bytes, str, or a callable taking a binary file object) to ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: "str | Path", obj, **kw) -> Path:
    """``atomic_write`` of ``obj`` as indented JSON (NaN refused unless ``allow_nan=True``)."""
    kw.setdefault("allow_nan", False)
    return atomic_write(path, json.dumps(jsonable(obj), indent=2, sort_keys=kw.pop("sort_keys", False),
                                         default=str, **kw) + "\n")


def jsonable(value):
    """numpy arrays and scalars, tuples and paths to plain JSON values (recursively); NaN and inf -> None."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def meta_sha256(record: dict) -> str:
    """SHA-256 of a saved artifact's description (``head.json``, ``model.json``) in canonical form, without
    its own ``meta_sha256``."""
    return sha256_json({k: v for k, v in record.items() if k != "meta_sha256"})


def save_artifact(folder: "str | Path", meta_name: str, record: dict, payloads: dict, format_version: int) -> Path:
    """Write a saved artifact: its payload files, then the JSON file that describes them.

    ``payloads`` maps a kind to ``(file name, bytes)``; the description gains ``<kind>_file`` and
    ``<kind>_sha256`` for each, ``format_version``, and ``meta_sha256`` (:func:`meta_sha256`).
    Integrity rule (``head.json``, ``model.json``): every file is written atomically, the payloads
    first, so a crash or a full disk leaves the previous description or none, never one naming a
    payload that is not there whole; the hashes refuse a payload or description changed later
    (:func:`read_artifact`, :func:`read_payload`). They stop accidents, not an author, who can write
    matching hashes: a payload must be data whatever its hash (arrays, a ``weights_only`` state dict).
    """
    folder = Path(folder)
    record = jsonable(dict(record))
    for kind, (name, data) in payloads.items():
        atomic_write(folder / name, data)
        record.update({f"{kind}_file": name, f"{kind}_sha256": hashlib.sha256(data).hexdigest()})
    record["format_version"] = format_version
    record = json.loads(json.dumps(record, allow_nan=False))  # the values exactly as a reader will see them
    record["meta_sha256"] = meta_sha256(record)
    return atomic_write(folder / meta_name, json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_artifact(folder: "str | Path", meta_name: str, fix: str, verify: bool = True) -> dict:
    """The description written by :func:`save_artifact`, refused (one line ending in ``fix``) when it is
    missing, not a JSON object, or (``verify``) changed after it was saved."""
    path = Path(folder) / meta_name
    if not path.is_file():
        raise UserInputError(f"{path} does not exist: {fix}")
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise UserInputError(f"{path} is not valid JSON ({exc}): {fix}") from None
    if not isinstance(record, dict):
        raise UserInputError(f"{path} is not a saved description: {fix}")
    if verify:
        verify_artifact(record, path, fix)
    return record


def verify_artifact(record: dict, path: "str | Path", fix: str) -> None:
    """Refuse a description (read from ``path``) whose ``meta_sha256`` is missing or not its own hash."""
    if record.get("meta_sha256") != meta_sha256(record):
        what = "has no meta_sha256 (written by an older version)" if "meta_sha256" not in record else \
            "was changed after it was saved (its meta_sha256 differs)"
        raise UserInputError(f"{path} {what}; refusing to use it: {fix}")


def read_payload(folder: "str | Path", record: dict, kind: str, names: tuple, fix: str) -> bytes:
    """The bytes of the ``kind`` payload the description names, refused unless its name is one of
    ``names`` (never a path elsewhere) and the bytes read hash to ``<kind>_sha256``."""
    name = record.get(f"{kind}_file", names[0])
    if name not in names:
        raise UserInputError(f"{Path(folder)} names {kind} file {name!r}, not one of {', '.join(names)}: {fix}")
    path = Path(folder) / name
    if not path.is_file():
        raise UserInputError(f"{path} does not exist: {fix}")
    data = path.read_bytes()
    expected = record.get(f"{kind}_sha256")
    if not expected or hashlib.sha256(data).hexdigest() != expected:
        raise UserInputError(f"{path} does not match the sha256 in its description (file changed or corrupted); "
                             f"refusing to use it: {fix}")
    return data


VERSIONED = ("transferlab", "numpy", "torch", "torchvision", "timm", "scikit-learn", "joblib", "h5py")


def library_versions(dists=VERSIONED) -> dict:
    """Versions of python and the named distributions (None when not installed); one record for all files."""
    out = {"python": platform.python_version()}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def lazy_names(package: str, api: dict, aliases: dict | None = None):
    """``(__getattr__, __dir__)`` for a package whose public names load from their modules on first
    use (PEP 562): ``api`` maps a name to its module (relative to ``package`` when it starts with a
    dot), ``aliases`` a public name to the module's own name. Importing the package then imports
    none of them, so light paths (a warm rerun, ``--help``) never pay for torch."""
    import importlib
    import sys

    aliases = aliases or {}

    def __getattr__(name: str):
        module = api.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), aliases.get(name, name))
        vars(sys.modules[package])[name] = value
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(api))

    return __getattr__, __dir__


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def other_runnable(samples: int = 5, gap: float = 0.01, stat: str = "/proc/stat") -> "float | None":
    """Threads of other processes ready to run now: the median of a few readings of the kernel's runnable
    count (``procs_running`` in ``/proc/stat``, which counts this process too) less one; None where the
    kernel does not say (not Linux). An instant reading, unlike the load average, which trails the last
    minute: a command that follows another of ours must not see that one's load as someone else's."""
    import statistics
    import time

    readings = []
    for i in range(samples):
        try:
            with open(stat, "rb") as fh:
                line = next(x for x in fh if x.startswith(b"procs_running"))
        except (OSError, StopIteration):
            return None
        readings.append(int(line.split()[1]))
        if i + 1 < samples:
            time.sleep(gap)
    return max(0.0, statistics.median(readings) - 1)


def threads_for_machine(others: "float | None" = None, cores: "int | None" = None,
                        environ=None) -> "tuple[int | None, str]":
    """``(threads, why)``: how many threads torch and BLAS should use on this machine now, or ``(None, '')``
    to leave their defaults (one per core): when the user set ``OMP_NUM_THREADS`` (or MKL's, OpenBLAS's), or
    every core is free. Otherwise one thread per core that other processes leave free, at least one: an
    OpenMP thread that waits for a core another process holds spins, and the command then runs slower
    on all the cores than on the free one."""
    environ = os.environ if environ is None else environ
    if any(environ.get(v) for v in THREAD_VARS):
        return None, ""
    cores = _cores() if cores is None else cores
    others = other_runnable() if others is None else others
    if others is None or cores <= 1:
        return None, ""
    threads = max(1, min(cores, int(cores - others + 0.5)))
    if threads >= cores:
        return None, ""
    return threads, (f"{threads} thread{'s' if threads > 1 else ''} for torch and BLAS: {others:g} thread(s) of "
                     f"other processes are ready to run on this machine's {cores} cores (set OMP_NUM_THREADS to "
                     "choose)")


@contextmanager
def machine_threads(log=None):
    """Run the block with :func:`threads_for_machine`'s count, restored after: the environment variables
    for libraries loaded inside the block (the CLI imports torch and numpy late), ``torch.set_num_threads``
    and threadpoolctl for those already loaded. ``log`` receives the reason when the count changes."""
    import sys

    threads, why = threads_for_machine()
    if threads is None:
        yield None
        return
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(threads) for v in THREAD_VARS})
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(threads)
    limits = None
    if "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
            limits = threadpool_limits(threads, user_api="blas")
        except ImportError:
            pass
    if log:
        log(why)
    try:
        yield threads
    finally:
        for v, value in saved.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value
        if limits is not None:
            limits.restore_original_limits()
        torch = sys.modules.get("torch")
        if torch:  # imported inside the block: back to its own default, one thread per core
            torch.set_num_threads(before or _cores())
