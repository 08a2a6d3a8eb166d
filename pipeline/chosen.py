"""The sweep's chosen probe, fitted again and saved, with its test confusion matrix.

The choice is the recommendation's, made on *validation* accuracy, never test: the layer the
sweep's decision names (:func:`chosen_row`), and at that layer the head with the best mean
validation accuracy over repeats; the report's headline, its plot marker and ``train --layer best``
name the same row.
That head is fitted again with the row's own settings (the same :func:`transferlab.classifiers.train_head` call
the sweep made, so it reproduces the row's test accuracy) and saved as ``<out>/chosen_head/``,
which ``transferlab predict --model <out>/chosen_head`` loads. Its predictions on the test split
give the confusion matrix and the per-class accuracy of the report.

Integrity rule of ``chosen_head/``: ``head.safetensors`` and ``head.json`` are written by
:func:`transferlab.classifiers.save_head` (atomic, the head file's sha256 inside ``head.json``);
``head.json`` also records the ``row_key`` of the row it was fitted for (as ``sweep_row_key``), so a
warm rerun whose choice is unchanged reuses it and a changed choice (other data, other rows) refits it.
The report loads the chosen head as arrays only, never a pickle: a ``chosen_head/`` holding
``head.joblib`` (written by an earlier version, or put there by someone else) is refitted, not
opened, and a head of your own that saves only as a pickle gets no confusion matrix.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transferlab.util import UserInputError

from .curves import best_on_validation, is_finetune, is_multilayer

CHOSEN_DIR = "chosen_head"


def chosen_row(rows: list[dict], decision: dict | None = None) -> dict | None:
    """The probe row the recommendation names, or None.

    With a sweep's ``decision`` (:func:`transferlab.pipeline.curves.decision_of`): at the layer it
    recommends (``chosen_layer``), on the cache file of the curve it was taken on, the head with the
    best validation accuracy. Without one (or when those rows are gone), the best on validation over
    all probe rows trained on the full training data (ties: the deeper layer).
    """
    probes = [r for r in rows if r.get("row_key") and r.get("cache_file") and not r.get("shots")
              and not is_finetune(r.get("head")) and not is_multilayer(r.get("head"))]
    layer, curve = (decision or {}).get("chosen_layer"), (decision or {}).get("curve") or {}
    at = [r for r in probes if r["layer"] == layer and r["cache_file"] == curve.get("cache_file")]
    for candidates in (at, probes):
        try:
            if candidates:
                return best_on_validation(candidates)
        except UserInputError:  # no validation accuracies among them
            continue
    return None


def _params(row: dict) -> dict:
    try:
        return json.loads(row.get("params") or "{}")
    except ValueError:
        return {}


def fit_chosen(out: Path, row: dict, preprocessing: str | None = None, log=None) -> dict:
    """Fit (or reuse) the chosen head in ``out/chosen_head`` and return its test evaluation.

    ``preprocessing`` is the sweep's setting (the row holds its description, not the setting);
    ``log`` receives a line before a fit (none when the saved head is reused).
    Returns ``{"row", "dir", "labels", "predictions", "confusion", "class_names", "test_accuracy"}``.
    """
    from sklearn.metrics import confusion_matrix

    from transferlab.classifiers import load_head, read_head_meta, train_head
    from transferlab.classifiers.persistence import HEAD_FILE, PICKLE_FILE
    from transferlab.features.cache import load_split, read_cache_meta

    folder = Path(out) / CHOSEN_DIR
    try:
        saved = read_head_meta(folder)
    except UserInputError:  # none yet, or not a head's description
        saved = {}
    # reuse only a head saved as arrays for this row: a pickle is refitted, never opened
    if saved.get("sweep_row_key") != row["row_key"] or saved.get("head_file") != HEAD_FILE:
        if log is not None:
            log(f"report: fitting the recommended head ({row['layer']} + {row['head']}) for the "
                f"confusion matrix; saved as {folder}")
        vf = float(row["val_fraction"]) if row.get("val_fraction") not in ("", None) else 0.2
        train_head(row["cache_file"], row["layer"], row["head"], out=folder, preprocessing=preprocessing,
                   val_fraction=vf,
                   seed=int(float(row.get("seed") or 0)), full_grid=row.get("grid") == "full",
                   extra_meta={"sweep_row_key": row["row_key"]})
    if read_head_meta(folder).get("head_file") != HEAD_FILE:
        raise UserInputError(f"the {row['head']} head saves only as a pickle ({folder / PICKLE_FILE}), which the "
                             f"report never loads; `transferlab predict --model {folder} --allow-pickle` uses it")
    head, _ = load_head(folder)  # arrays only: allow_pickle stays False
    X, y, _ = load_split(row["cache_file"], "test", row["layer"])
    pred = np.asarray(head.predict(X))
    names = read_cache_meta(row["cache_file"]).get("class_names")
    names = list(names) if isinstance(names, list) else [str(i) for i in range(int(max(y.max(), pred.max())) + 1)]
    labels = np.arange(len(names))
    return {"row": row, "dir": folder, "labels": y, "predictions": pred, "class_names": names,
            "confusion": confusion_matrix(y, pred, labels=labels), "test_accuracy": float(np.mean(pred == y)),
            "params": _params(row)}


def reuse_chosen(sweep_dir, cache_file, layer: str, head: str, out, preprocessing=None, full_grid=False,
                 val_fraction=0.2, seed=0, pca=None) -> tuple[dict | None, str]:
    """``train --features SWEEP``: the sweep's ``chosen_head/`` when it is the head asked for, copied to ``out``.

    It is that head when its ``sweep_row_key`` is the key ``train`` would give the row (the same cache
    file, layer and head, with train's preprocessing, grid, validation fraction and seed, as repeat 0
    on all training examples; no ``pca``) and it is saved as arrays. Returns ``(head.json's content,
    what was done)``, or ``(None, why it is refitted)``; ``(None, "")`` when ``sweep_dir`` is no folder
    (a cache file). The copy writes the head file first, then ``head.json``, each atomically (the rule
    of :func:`transferlab.util.save_artifact`), after the hashes are checked.
    """
    from transferlab.classifiers import load_head, read_head_meta
    from transferlab.classifiers.persistence import HEAD_FILE, META_FILE, PICKLE_FILE
    from transferlab.util import atomic_write

    from .results import CurrentRun, ProbeSettings, read_rows, why_not_current

    if not Path(sweep_dir).expanduser().is_dir():
        return None, ""
    settings = ProbeSettings(preprocessing, "full" if full_grid else "default", val_fraction, seed)
    folder = Path(sweep_dir).expanduser() / CHOSEN_DIR
    try:
        saved = read_head_meta(folder)
    except UserInputError:
        return None, f"refitting: {folder} holds no saved head (the sweep saves one when it recommends a layer)"
    row = next((r for r in read_rows(Path(sweep_dir).expanduser() / "results.csv")
                if r.get("row_key") and r["row_key"] == saved.get("sweep_row_key")), None)
    if row is None:
        return None, f"refitting: {folder} was fitted for a row no longer in the sweep's results.csv"
    if (row["layer"], row["head"], row["cache_file"]) != (layer, head, str(cache_file)):
        return None, f"refitting: {folder} holds {row['layer']} + {row['head']}, not {layer} + {head}"
    if saved.get("head_file") != HEAD_FILE:
        return None, f"refitting: {folder} holds a pickle ({PICKLE_FILE}), which is never opened"
    if pca:
        return None, f"refitting: --pca {pca} is not part of the sweep's fit in {folder}"
    if str(row.get("repeat") or "0") not in ("0", "0.0"):
        return None, f"refitting: {folder} holds repeat {row['repeat']} of the sweep (seed {row.get('seed')})"
    spec = (row["backbone"], row["weights"], row["pool"], str(row["image_size"]))
    now = CurrentRun(row.get("data", ""), row.get("data_fingerprint", ""), {spec: row["cache_key"]}, settings)
    why = why_not_current(row, now)
    if why is not None:
        return None, f"refitting: {folder} holds this layer and head fitted with {why}"
    try:
        load_head(folder)  # checks both hashes (and the versions) before the copy
    except UserInputError as exc:
        return None, f"refitting: {folder} fails its check ({exc})"
    out = Path(out).expanduser()
    if out.resolve() != folder.resolve():
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / HEAD_FILE, (folder / HEAD_FILE).read_bytes())
        atomic_write(out / META_FILE, (folder / META_FILE).read_bytes())
        (out / PICKLE_FILE).unlink(missing_ok=True)
    return saved, (f"reused {folder}: the sweep's fit of this very head (same key), not refitted"
                   + ("" if out.resolve() == folder.resolve() else f"; copied to {out}"))
