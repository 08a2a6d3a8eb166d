"""Saving and loading heads: ``head.joblib`` (the fitted estimator) beside ``head.json`` (what it is).

``head.json`` records where the head came from (layer, backbone, weights, preprocessing, cache
file and key, class names...), how good it is (``val_accuracy``, ``test_accuracy``, per-class
report), the library versions, and ``head_sha256``, the SHA-256 of ``head.joblib``.

Integrity rule: both files are written atomically (temporary file in the same folder, then
``os.replace``), ``head.joblib`` first. ``head.json`` carries ``meta_sha256``, the SHA-256 of its
own canonical JSON without that field, so an edit of anything that decides a prediction (the
layer, the extraction spec, the class names, the head file's hash) is refused. Unpickling runs
code, so :func:`load_head` verifies before it loads: ``head.json``'s own hash, then the joblib
file's hash against ``head_sha256``, then the installed scikit-learn and joblib against the versions
that wrote it. A crash or a full disk leaves the previous pair or no ``head.json`` (never a
``head.json`` naming a joblib file that is not there whole).

The hashes protect against accidents (a damaged or edited file, a stale copy), not against a
tampering author: whoever writes a head can write matching hashes. A head file from someone else
is code; load only heads you trust.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib

from transferlab.util import UserInputError, atomic_write, jsonable, library_versions, sha256_json
from transferlab.util import sha256_file as file_sha256

HEAD_FILE = "head.joblib"
META_FILE = "head.json"
FORMAT_VERSION = 1
CHECKED_VERSIONS = ("scikit-learn", "joblib")


def save_head(out_dir, estimator, meta: dict) -> Path:
    """Write ``out_dir/head.joblib`` and ``out_dir/head.json``.

    Parameters
    ----------
    out_dir : str or path-like
        Created if missing.
    estimator : fitted scikit-learn estimator
        Usually the ``Pipeline`` of :attr:`HeadResult.estimator`.
    meta : dict
        Provenance and scores (layer, backbone, weights, preprocessing, params, val_accuracy,
        test_accuracy, ...). ``versions``, ``head_file``, ``head_sha256`` and ``format_version``
        are added.

    Returns
    -------
    pathlib.Path
        The path of ``head.json``.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create output folder {out}: {exc.strerror}") from None
    head_path = out / HEAD_FILE
    atomic_write(head_path, lambda fh: joblib.dump(estimator, fh))
    record = jsonable(dict(meta))
    record.update(format_version=FORMAT_VERSION, versions=library_versions(), head_file=HEAD_FILE,
                  head_sha256=file_sha256(head_path))
    record = json.loads(json.dumps(record, allow_nan=False))  # the values exactly as a reader will see them
    record["meta_sha256"] = meta_sha256(record)
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(out / META_FILE, text)
    return out / META_FILE


def meta_sha256(record: dict) -> str:
    """SHA-256 of a ``head.json`` record in canonical form, without its own ``meta_sha256``."""
    return sha256_json({k: v for k, v in record.items() if k != "meta_sha256"})


def read_head_meta(model_dir) -> dict:
    """The parsed ``head.json`` of a saved head (no unpickling)."""
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise UserInputError(f"{path} does not exist: pass a folder written by `transferlab train --out`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not valid JSON ({exc}): retrain the head with `transferlab train`") from None
    if not isinstance(meta, dict):
        raise UserInputError(f"{path} is not a head description: retrain the head with `transferlab train`")
    return meta


def load_head(model_dir):
    """Load a saved head after checking its hash and library versions.

    Parameters
    ----------
    model_dir : str or path-like
        A folder written by :func:`save_head`.

    Returns
    -------
    estimator : fitted scikit-learn estimator
    meta : dict
        The contents of ``head.json``.

    Raises
    ------
    UserInputError
        Missing files, a ``head.joblib`` whose SHA-256 differs from ``head.json``, or a
        scikit-learn / joblib version other than the one that saved it. Nothing is unpickled then.
    """
    meta = read_head_meta(model_dir)
    if meta.get("meta_sha256") != meta_sha256(meta):
        what = "has no meta_sha256 (written by an older version)" if "meta_sha256" not in meta else \
            "was changed after it was saved (its meta_sha256 differs)"
        raise UserInputError(f"{Path(model_dir) / META_FILE} {what}; refusing to use it: retrain the head with "
                             f"`transferlab train --out {model_dir}`")
    head_path = Path(model_dir) / HEAD_FILE
    if not head_path.is_file():
        raise UserInputError(f"{head_path} does not exist: retrain the head with `transferlab train --out {model_dir}`")
    expected = meta.get("head_sha256")
    actual = file_sha256(head_path)
    if not expected or actual != expected:
        raise UserInputError(f"{head_path} does not match the sha256 in {META_FILE} (file changed or corrupted); "
                             "refusing to unpickle it: retrain the head with `transferlab train`")
    saved = meta.get("versions") or {}
    installed = library_versions()
    for dist in CHECKED_VERSIONS:
        if saved.get(dist) != installed[dist]:
            raise UserInputError(f"{head_path} was saved with {dist} {saved.get(dist)}, this environment has "
                                 f"{installed[dist]}: install {dist}=={saved.get(dist)} or retrain the head")
    return joblib.load(head_path), meta
