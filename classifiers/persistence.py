"""Saving and loading heads: ``head.safetensors`` (the fitted arrays) beside ``head.json`` (what it is).

A head is data, never code: :func:`save_head` writes every array of the fitted estimator (scaler
means and scales, PCA axes, coefficients, MLP weights, k-NN training rows...) to ``head.safetensors``
and, in ``head.json``, the recipe that rebuilds it (``estimator``: each step's class, its
parameters and its other fitted attributes as JSON). :func:`load_head` instantiates only the
classes of :func:`safe_classes` and sets their attributes from that data, so opening a head from a
stranger runs none of their code. An estimator outside that list (a head of your own) or holding
something that is not data is saved as ``head.joblib``, a pickle; :func:`load_head` refuses a pickle
(the heads of earlier versions included) unless told ``allow_pickle=True`` (``predict
--allow-pickle``), and the sweep and fine-tuning never pass it.

``head.json`` also records where the head came from (layer, backbone, weights, preprocessing,
cache file and key, class names...), how good it is (``val_accuracy``, ``test_accuracy``, per-class
report) and the library versions. Integrity rule: :func:`transferlab.util.save_artifact` (atomic
writes, the head file first; ``head_file``, ``head_sha256``, ``format_version`` and the self-hash
``meta_sha256``, so an edit of anything that decides a prediction is refused); :func:`load_head`
checks both hashes, then the installed scikit-learn (and joblib, for a pickle) against the versions
that wrote it, before it reads the head file's content. Saving a head of the other format over a
folder removes the file of the first, after ``head.json`` names the new one.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np

from transferlab.util import UserInputError, library_versions, read_artifact, read_payload, save_artifact

HEAD_FILE = "head.safetensors"
PICKLE_FILE = "head.joblib"
META_FILE = "head.json"
FORMAT_VERSION = 2  # 1: every head a pickle (head.joblib)
_FIX = "retrain the head with `transferlab train --out {dir}`"



@functools.cache
def safe_classes() -> dict:
    """The estimators a head is saved as arrays with, by class name (exactly these classes, not subclasses).

    Imported on first use: a linear head loaded ``as_numpy`` needs none of them."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC, LinearSVC

    from .fast_knn import TorchKNeighborsClassifier
    from .fast_logreg import TorchLogisticRegression
    from .fast_mlp import TorchMLPClassifier
    from .fast_svm import TorchLinearSVC
    from .multilayer import MultiLayerLogisticRegression
    from .preprocessing import ShrunkStandardScaler
    from .ridge import RidgeProbe

    return {cls.__name__: cls for cls in (
        Pipeline, Normalizer, StandardScaler, ShrunkStandardScaler, PCA, TorchLogisticRegression, TorchLinearSVC,
        RidgeProbe, LogisticRegression, LinearSVC, SVC, MLPClassifier, KNeighborsClassifier,
        TorchKNeighborsClassifier, TorchMLPClassifier, MultiLayerLogisticRegression)}

# fitted attributes that are not data: training state a loaded head never uses (dropped), or objects
# rebuilt from the data after the rest is set
_DROPPED = {"MLPClassifier": {"_optimizer", "_random_state"}, "TorchMLPClassifier": {"_optimizer", "_random_state"},
            "TorchLogisticRegression": {"_solutions", "_preconditioner"},
            "TorchLinearSVC": {"_solutions", "_preconditioner"}}


def _label_binarizer(est):
    from sklearn.preprocessing import LabelBinarizer

    return LabelBinarizer().fit(est.classes_)


def _neighbours_tree(est):
    from sklearn.base import clone

    return clone(est).fit(est._fit_X, est.classes_[est._y])._tree


_REBUILT = {("MLPClassifier", "_label_binarizer"): _label_binarizer,
            ("TorchMLPClassifier", "_label_binarizer"): _label_binarizer,
            ("KNeighborsClassifier", "_tree"): _neighbours_tree,
            ("TorchKNeighborsClassifier", "_tree"): _neighbours_tree}


class _NotData(Exception):
    """An estimator, parameter or attribute that arrays and JSON cannot hold: the head is pickled."""


def _encode(value, key: str, arrays: dict):
    """``value`` as JSON; its numeric arrays and numpy scalars go to ``arrays`` under ``key``.

    Plain JSON values stand for themselves; everything else is a one-key object naming its type
    (``array``, ``array_t`` (F order), ``scalar``, ``strings``, ``float``, ``list``, ``tuple``, ``dict``)."""
    if isinstance(value, np.ndarray):
        # safetensors writes C order; a column-major matrix goes transposed, so it comes back in its own
        # layout and products with it round exactly as before (BLAS sums in another order otherwise)
        if value.dtype.kind in "biuf":
            fortran = value.ndim == 2 and not value.flags.c_contiguous and value.strides[0] < value.strides[1]
            arrays[key] = np.ascontiguousarray(value.T if fortran else value)
            return {"array_t" if fortran else "array": key}
        if value.dtype.kind == "U":
            return {"strings": value.tolist()}
        raise _NotData(f"{key} is a {value.dtype} array")
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        arrays[key] = np.asarray(value)
        return {"scalar": key}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or type(value) in (bool, int, float):
        return value
    if isinstance(value, str):
        return str(value)
    if type(value) in (list, tuple):
        return {type(value).__name__: [_encode(v, f"{key}.{i}", arrays) for i, v in enumerate(value)]}
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v, f"{key}.{k}", arrays) for k, v in value.items()}}
    raise _NotData(f"{key} is a {type(value).__name__}")


def _decode(value, arrays: dict):
    """The inverse of :func:`_encode`; anything it did not write raises ValueError or KeyError."""
    if isinstance(value, list):
        raise ValueError("an untagged list")
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"an object with keys {sorted(value)}")
    (tag, inner), = value.items()
    if tag in ("array", "array_t"):  # a copy, writable and owning its memory; in F order as it was saved
        return np.array(arrays[inner]) if tag == "array" else np.array(arrays[inner]).T
    if tag == "scalar":
        if arrays[inner].ndim != 0:
            raise ValueError(f"{inner} is not a scalar")
        return arrays[inner][()]
    if tag == "strings":
        return np.array(inner, dtype=str)
    if tag == "float" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    if tag in ("list", "tuple") and isinstance(inner, list):
        items = [_decode(v, arrays) for v in inner]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict" and isinstance(inner, dict):
        return {k: _decode(v, arrays) for k, v in inner.items()}
    raise ValueError(f"an unknown entry {tag!r}")


def _encode_estimator(est, key: str, arrays: dict) -> dict:
    """The recipe of one fitted estimator (a Pipeline: of each step), its arrays added to ``arrays``."""
    name = type(est).__name__
    if safe_classes().get(name) is not type(est):
        raise _NotData(f"{type(est).__module__}.{type(est).__qualname__} is not one of the estimators saved as arrays")
    params = est.get_params(deep=False)
    if name == "Pipeline":
        steps = [{"name": step, **_encode_estimator(s, f"{key}{step}.", arrays)} for step, s in params.pop("steps")]
        return {"class": name, "params": {k: _encode(v, f"{key}params.{k}", arrays) for k, v in params.items()},
                "steps": steps}
    state = {}
    for attr, value in vars(est).items():
        if attr in params or attr in _DROPPED.get(name, ()):
            continue
        try:
            state[attr] = _encode(value, f"{key}{attr}", arrays)
        except _NotData:
            if (name, attr) not in _REBUILT:
                raise
            state[attr] = {"rebuilt": None}
    return {"class": name, "params": {k: _encode(v, f"{key}params.{k}", arrays) for k, v in params.items()},
            "state": state}


def _decode_estimator(recipe: dict, arrays: dict):
    """The fitted estimator a recipe describes; only :func:`safe_classes` are ever instantiated."""
    name = recipe["class"]
    cls = safe_classes().get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{name!r} is not one of the estimators saved as arrays")
    params = {str(k): _decode(v, arrays) for k, v in recipe["params"].items()}
    if name == "Pipeline":
        return cls([(str(s["name"]), _decode_estimator(s, arrays)) for s in recipe["steps"]], **params)
    est, rebuilt = cls(**params), []
    for attr, value in recipe["state"].items():
        if not attr.isidentifier() or attr.startswith("__") or attr in params:
            raise ValueError(f"attribute {attr!r}")
        if value == {"rebuilt": None} and (name, attr) in _REBUILT:
            rebuilt.append(attr)
        else:
            setattr(est, attr, _decode(value, arrays))
    for attr in rebuilt:
        setattr(est, attr, _REBUILT[(name, attr)](est))
    return est


def _linear_head(recipe: dict, arrays: dict):
    """The recipe as a numpy :class:`~transferlab.classifiers.linear_apply.LinearHead`, or None when one of its
    steps is not linear (or not one that module repeats exactly)."""
    from .linear_apply import linear_head

    steps = recipe["steps"] if recipe["class"] == "Pipeline" else [recipe]
    if not steps or any(not isinstance(s, dict) or "state" not in s for s in steps):
        return None  # a nested pipeline: left to scikit-learn
    return linear_head([(s["class"], {str(k): _decode(v, arrays) for k, v in s["params"].items()},
                         {str(k): _decode(v, arrays) for k, v in s["state"].items() if v != {"rebuilt": None}})
                        for s in steps])


def save_head(out_dir, estimator, meta: dict) -> Path:
    """Write ``out_dir/head.safetensors`` (or, for an estimator that is not data, ``head.joblib``) and
    ``out_dir/head.json``.

    Parameters
    ----------
    out_dir : str or path-like
        Created if missing.
    estimator : fitted scikit-learn estimator
        Usually the ``Pipeline`` of :attr:`HeadResult.estimator`. Pipelines of :func:`safe_classes`
        (every built-in head and preprocessing) are saved as arrays; anything else as a pickle,
        which :func:`load_head` loads only with ``allow_pickle=True``.
    meta : dict
        Provenance and scores (layer, backbone, weights, preprocessing, params, val_accuracy,
        test_accuracy, ...). ``estimator`` (the recipe, arrays only), ``versions``, ``head_file``,
        ``head_sha256``, ``format_version`` and ``meta_sha256`` are added.

    Returns
    -------
    pathlib.Path
        The path of ``head.json``.
    """
    from safetensors.numpy import save

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create output folder {out}: {exc.strerror}") from None
    record = dict(meta)
    try:
        arrays: dict = {}
        record["estimator"] = _encode_estimator(estimator, "", arrays)
        payload = (HEAD_FILE, save(arrays))
    except _NotData:
        import joblib

        record.pop("estimator", None)
        buf = io.BytesIO()
        joblib.dump(estimator, buf)
        payload = (PICKLE_FILE, buf.getvalue())
    record["versions"] = library_versions()
    written = save_artifact(out, META_FILE, record, {"head": payload}, FORMAT_VERSION)
    (out / (PICKLE_FILE if payload[0] == HEAD_FILE else HEAD_FILE)).unlink(missing_ok=True)
    return written


def read_head_meta(model_dir) -> dict:
    """The parsed ``head.json`` of a saved head (its hashes unchecked; nothing else is read)."""
    return read_artifact(model_dir, META_FILE, "pass a folder written by `transferlab train --out`", verify=False)


def head_layers(meta: dict) -> list[str]:
    """The layers a saved head reads, in the order of its input columns: a multi-layer head's ``layers``,
    else its one ``layer``."""
    layers = meta.get("layers")
    return [str(n) for n in layers] if isinstance(layers, list) and layers else [str(meta["layer"])]


def _check_versions(meta: dict, dists, head_path: Path) -> None:
    saved = meta.get("versions") or {}
    installed = library_versions()
    for dist in dists:
        if saved.get(dist) != installed[dist]:
            raise UserInputError(f"{head_path} was saved with {dist} {saved.get(dist)}, this environment has "
                                 f"{installed[dist]}: install {dist}=={saved.get(dist)} or retrain the head")


def load_head(model_dir, allow_pickle: bool = False, as_numpy: bool = False):
    """Load a saved head after checking its hashes and library versions.

    Parameters
    ----------
    model_dir : str or path-like
        A folder written by :func:`save_head`.
    allow_pickle : bool
        Also load a head saved as a pickle (``head.joblib``: a head of your own, or any head saved
        before format version 2). Unpickling runs whatever code the file's author put in it: pass
        True only for a head whose author you trust (numpy's ``np.load`` has the same switch).
    as_numpy : bool
        A head whose saved form is linear comes back as a
        :class:`~transferlab.classifiers.linear_apply.LinearHead`: the same scores, labels and
        probabilities, computed with numpy alone (scikit-learn is not imported). Other heads as usual.

    Returns
    -------
    estimator : fitted scikit-learn estimator (or LinearHead)
    meta : dict
        The contents of ``head.json``.

    Raises
    ------
    UserInputError
        Missing files, a ``head.json`` or head file changed after it was saved, a scikit-learn
        (pickle: or joblib) version other than the one that saved it, a pickle without
        ``allow_pickle``, or a recipe that does not rebuild a working head. Nothing is unpickled then.
    """
    folder = Path(model_dir)
    fix = _FIX.format(dir=folder)
    meta = read_artifact(folder, META_FILE, fix)
    if meta.get("format_version") not in (1, FORMAT_VERSION):
        raise UserInputError(f"{folder / META_FILE} has format version {meta.get('format_version')!r}, which this "
                             f"version of TransferLab does not read: {fix}")
    if meta.get("head_file", PICKLE_FILE) == PICKLE_FILE:
        if not allow_pickle:
            raise UserInputError(f"{folder / PICKLE_FILE} is a pickle, and loading it runs whatever code its author "
                                 f"put in it: {fix} (heads save as arrays now), or pass --allow-pickle "
                                 f"(allow_pickle=True) if you trust its author")
        data = read_payload(folder, meta, "head", (PICKLE_FILE,), fix)
        _check_versions(meta, ("scikit-learn", "joblib"), folder / PICKLE_FILE)
        import joblib

        return joblib.load(io.BytesIO(data)), meta
    from safetensors.numpy import load

    data = read_payload(folder, meta, "head", (HEAD_FILE,), fix)
    _check_versions(meta, ("scikit-learn",), folder / HEAD_FILE)
    try:
        arrays = load(data)
        estimator = (_linear_head(meta["estimator"], arrays) if as_numpy else None) or \
            _decode_estimator(meta["estimator"], arrays)
        estimator.predict(np.zeros((1, int(estimator.n_features_in_)), np.float32))  # one row: the arrays agree
    except Exception as exc:
        raise UserInputError(f"{folder / HEAD_FILE} with {META_FILE} does not rebuild a working head "
                             f"({exc.__class__.__name__}: {exc}): {fix}") from None
    return estimator, meta
