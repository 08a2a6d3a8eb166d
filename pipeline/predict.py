"""Classify images with a saved head and the backbone it was trained on, or a fine-tuned model.

``--model DIR`` is either a ``train --out`` directory (``head.json`` holds the resolved extraction
spec of the cached features and the layer: the backbone is rebuilt from the spec's backbone,
weights and seed, its weights fingerprint checked against the spec, and the layer (every layer of a
multi-layer head, in one forward pass) extracted with the spec's size, interpolation, mean, std,
pooling and storage dtype) or a ``finetune --out`` directory (``model.json`` + ``model.pt``: the
whole fine-tuned network).

A head saved as a pickle (``head.joblib``: a head of your own, or one saved by an earlier version) is
refused unless ``allow_pickle=True`` (``--allow-pickle``): unpickling runs its author's code.

Inputs are image files and folders (searched recursively for image extensions, in sorted order).
Each result row has the predicted class, and either its ``probability`` (heads with
``predict_proba``: logreg, mlp, knn; fine-tuned networks: softmax) or its ``margin`` (heads without
probabilities: the linear SVM's decision value), never both in one column, and the ``top_k`` classes
with their scores. An unreadable file becomes a row with an ``error`` and the run goes on
(``strict=True`` stops at the first instead).

``predictions.csv`` (:data:`CSV_COLUMNS`): every field quoted (``csv.QUOTE_ALL``); ``top_classes``
and ``top_scores`` are JSON lists, best first, so a class name holding ``;``, ``,`` or a quote
stays one entry; a text field (path, class, error) starting with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return gets a leading ``'`` so a spreadsheet shows it instead of running it as a
formula (OWASP's CSV injection advice; the JSON lists start with ``[``). The printed lines
(:func:`format_line`) are tab-separated with a backslash, tab, newline or carriage return in a path
or class name written as ``\\\\``, ``\\t``, ``\\n``, ``\\r``.

:func:`predict` returns these columns as a DataFrame (lists for the top classes and scores, missing
values for the score a model does not give and for no error); :func:`predict_rows` the rows as dicts
(what ``--json`` prints).

Integrity rule of ``--out predictions.csv``: written whole and atomically
(:func:`transferlab.util.atomic_write`) after every image is classified; a crash or a full disk
leaves no file or the previous one, never a half-written table.

Imports rule: torch, the backbone and the head's libraries are imported when a model is loaded, so
:func:`expand_images` (the command's first line) imports none of them; a linear head (logreg, the
linear SVM, ridge, the multi-layer head) is applied with numpy alone
(:mod:`transferlab.classifiers.linear_apply`), so scikit-learn is not imported for it
(``tests/pipeline/test_first_line.py``).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from transferlab.features.dataset import IMAGE_EXTENSIONS
from transferlab.util import UserInputError, atomic_write

CSV_COLUMNS = ["path", "class", "probability", "margin", "top_classes", "top_scores", "error"]
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may read as the start of a formula
_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def expand_images(inputs) -> list[Path]:
    """Files as given, folders replaced by their image files (recursive, sorted); missing paths refused."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise UserInputError(f"folder {p} holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise UserInputError(f"image {p} does not exist")
    if not paths:
        raise UserInputError("predict needs at least one IMAGE file or folder")
    return paths


def _rows_from_scores(chunk, scores: np.ndarray, kind: str, names: list, top_k: int) -> list[dict]:
    rows = []
    for p, sc in zip(chunk, scores):
        order = [i for i in np.argsort(-sc, kind="stable") if np.isfinite(sc[i])][:top_k]
        lab = int(order[0])
        rows.append({"path": str(p), "class": names[lab] if lab < len(names) else str(lab), "label": lab,
                     "score_kind": kind, "score": float(sc[lab]),
                     "top_k": [(names[i] if i < len(names) else str(int(i)), float(sc[i])) for i in order]})
    return rows


def head_scores(head, feats: np.ndarray) -> tuple[np.ndarray, str]:
    """(n, n_classes) scores over the head's classes 0..K-1, and their kind."""
    if hasattr(head, "predict_proba"):
        return np.asarray(head.predict_proba(feats)), "probability"
    d = np.asarray(head.decision_function(feats))
    if d.ndim == 1:  # binary: the decision value is the margin of class 1 over class 0
        d = np.stack([-d, d], axis=1)
    return d, "margin"


def _run(paths, batch_size, progress, strict, classify, spec) -> list[dict]:
    """Classify in batches, each image prepared as ``spec`` says (the size, mean, std and interpolation
    the model was trained with); unreadable files become error rows (or stop the run when ``strict``)."""
    import torch
    from tqdm.auto import tqdm

    from transferlab.features.preprocess import preprocess_image, read_image

    rows = []
    for s in tqdm(range(0, len(paths), batch_size), disable=not progress or len(paths) <= batch_size,
                  desc="predict", unit="batch"):
        chunk, tensors, bad = [], [], []
        for p in paths[s:s + batch_size]:
            try:
                tensors.append(preprocess_image(read_image(p, spec.exif_transpose), spec.image_size, spec.mean,
                                                spec.std, spec.interpolation))
                chunk.append(p)
            except UserInputError as exc:
                if strict:
                    raise
                bad.append({"path": str(p), "error": str(exc)})
        if chunk:
            rows += classify(chunk, torch.stack(tensors))
        rows += bad
    order = {str(p): i for i, p in enumerate(paths)}
    return sorted(rows, key=lambda r: order[r["path"]])


MODEL_KINDS = ("a `train --out` folder (head.json), a sweep folder (its chosen_head/) or a `finetune --out` "
               "folder (model.json)")


def find_model(model_dir) -> Path:
    """The folder that holds the model ``--model`` names: itself, or a sweep folder's ``chosen_head/``;
    refused with the three kinds it may be when it holds none."""
    model_dir = Path(model_dir).expanduser()
    for folder in (model_dir, model_dir / "chosen_head"):
        if (folder / "head.json").is_file() or (folder / "model.json").is_file():
            return folder
    what = "does not exist" if not model_dir.exists() else "holds no saved model"
    raise UserInputError(f"--model {model_dir} {what}: give {MODEL_KINDS}")


def predict_rows(model_dir, images, batch_size: int = 32, device: str = "auto", progress: bool = True,
                 top_k: int = 3, strict: bool = False, out=None, allow_pickle: bool = False) -> list[dict]:
    """Classify image files and folders; one dict per image, in input order (:func:`predict` as dicts).

    Returns
    -------
    list of dict
        ``path, class, label, score_kind ("probability" or "margin"), score, top_k`` (a list of
        ``(class, score)``), or ``path, error`` for an unreadable file.
    """
    if int(top_k) < 1:
        raise UserInputError(f"--top-k {top_k} must be at least 1")
    paths = expand_images(images)
    model_dir = find_model(model_dir)
    if (model_dir / "model.json").is_file() and not (model_dir / "head.json").is_file():
        rows = _predict_finetuned(model_dir, paths, batch_size, device, progress, top_k, strict)
    else:
        from transferlab.classifiers import load_head

        rows = _predict_head(load_head(model_dir, allow_pickle=allow_pickle, as_numpy=True), model_dir, paths,
                             batch_size, device, progress, top_k, strict)
    if out is not None:
        write_predictions(out, rows)
    return rows


def predict(model_dir, images, batch_size: int = 32, device: str = "auto", progress: bool = True,
            top_k: int = 3, strict: bool = False, out=None, allow_pickle: bool = False):
    """Classify image files and folders: a DataFrame, one row per image in input order.

    Parameters
    ----------
    model_dir : path
        A ``train --out`` or ``finetune --out`` directory, or a sweep folder (its ``chosen_head/``).
    images : list of paths
        Image files and folders (recursive).
    top_k : int
        How many classes (best first) each row's ``top_classes`` holds.
    strict : bool
        Stop at the first unreadable file instead of recording it as an error row.
    out : path, optional
        Also write the rows to this CSV file (columns :data:`CSV_COLUMNS`).
    allow_pickle : bool
        Also load a head saved as a pickle (see :func:`transferlab.classifiers.load_head`): only a
        head whose author you trust.

    Returns
    -------
    pandas.DataFrame
        The columns of ``predictions.csv`` (:data:`CSV_COLUMNS`): ``path``, ``class``, ``probability``
        or ``margin`` (the other missing), ``top_classes`` and ``top_scores`` (lists, best first), and
        ``error`` (missing, or why the file could not be read; its other fields are then missing or empty).
    """
    import pandas as pd

    rows = predict_rows(model_dir, images, batch_size=batch_size, device=device, progress=progress, top_k=top_k,
                        strict=strict, out=out, allow_pickle=allow_pickle)
    return pd.DataFrame([prediction_record(r) for r in rows], columns=CSV_COLUMNS)


def _predict_head(loaded, model_dir, paths, batch_size, device, progress, top_k, strict) -> list[dict]:
    import torch

    from transferlab.classifiers import head_layers
    from transferlab.features import ExtractionSpec, FeatureTap, build_backbone, resolve_device

    head, meta = loaded
    if not isinstance(meta.get("extraction"), dict):
        raise UserInputError(f"{model_dir}/head.json has no extraction spec (written by an older version); "
                             f"retrain the head with `transferlab train`")
    spec, layers = ExtractionSpec.from_dict(meta["extraction"]), head_layers(meta)  # in forward order
    bb = build_backbone(spec.backbone, weights=spec.weights, seed=spec.seed)
    if bb.weights_sha256 != spec.weights_sha256:
        raise UserInputError(f"the weights of {spec.backbone} ({spec.weights}) are not the ones the head in "
                             f"{model_dir} was trained on (sha256 differs); retrain the head")
    width = _head_width(head, meta, model_dir)
    modules = dict(bb.model.named_modules())
    for layer in layers:
        if layer not in modules:
            raise UserInputError(f"{model_dir}/head.json names layer {layer!r}, which {spec.backbone} does not "
                                 f"have; retrain the head")
    layer = "+".join(layers)
    dev = resolve_device(device)
    model = bb.model.to(dev).eval()
    tap = FeatureTap(model, layers, spec.pool, stop_after=layers[-1])  # every layer in one forward pass
    class_names = list(meta.get("class_names") or [])

    def classify(chunk, x):
        # round to the cache's storage dtype, as the head's training rows were
        pooled = tap(x.to(dev))
        feats = np.concatenate([pooled[n].cpu().numpy().astype(spec.dtype).astype(np.float32) for n in layers], 1)
        if feats.shape[1] != width:
            raise UserInputError(f"layer {layer!r} gives {feats.shape[1]} features but the head in {model_dir} "
                                 f"takes {width}; head.json does not describe this head: retrain it")
        scores, kind = head_scores(head, feats)
        classes = np.asarray(getattr(head, "classes_", np.arange(scores.shape[1])), dtype=np.int64)
        full = np.full((len(chunk), max(len(class_names), int(classes.max()) + 1)), -np.inf)
        full[:, classes] = scores  # columns = class index, whatever subset the head saw
        return _rows_from_scores(chunk, full, kind, class_names, top_k)

    try:
        with torch.inference_mode():
            return _run(paths, batch_size, progress, strict, classify, spec)
    finally:
        tap.close()


def _head_width(head, meta: dict, model_dir) -> int:
    """The feature width the head was fitted on; head.json's ``dim`` must agree."""
    width = getattr(head, "n_features_in_", None)
    if width is None or (meta.get("dim") is not None and int(meta["dim"]) != int(width)):
        raise UserInputError(f"{model_dir}/head.json says {meta.get('dim')} features but the head takes {width}; "
                             f"retrain the head")
    return int(width)


def _predict_finetuned(run_dir: Path, paths: list, batch_size: int, device: str, progress: bool, top_k: int,
                       strict: bool) -> list[dict]:
    import torch

    from transferlab.features import resolve_device
    from transferlab.finetuning.saved import load_finetuned

    model, meta = load_finetuned(run_dir, device=str(resolve_device(device)))
    spec = meta["spec"]
    dev = next(model.parameters()).device
    names = list(meta.get("class_names") or [])

    def classify(chunk, x):
        probs = torch.softmax(model(x.to(dev)).float(), 1).cpu().numpy()
        return _rows_from_scores(chunk, probs, "probability", names, top_k)

    with torch.inference_mode():
        return _run(paths, batch_size, progress, strict, classify, spec)


def neutralise(text: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` before a :data:`FORMULA_PREFIXES` start."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def format_line(row: dict) -> str:
    """One printed line: path, class, score, its kind, then the other top classes with their scores,
    tab-separated; backslash, tab, newline and carriage return in names escaped."""
    def esc(text):
        return str(text).translate(_TSV_ESCAPES)

    others = "  ".join(f"{esc(c)} {s:.3f}" for c, s in row["top_k"][1:])
    return f"{esc(row['path'])}\t{esc(row['class'])}\t{row['score']:.4f}\t{row['score_kind']}" + \
        (f"\t{others}" if others else "")


def prediction_record(row: dict) -> dict:
    """One row in the columns of :data:`CSV_COLUMNS`, typed: floats (NaN for the score the model does not
    give), lists for the top classes and scores, None for no error (an error row has only path and error)."""
    if "error" in row:
        return {"path": row["path"], "class": None, "probability": float("nan"), "margin": float("nan"),
                "top_classes": [], "top_scores": [], "error": row["error"]}
    return {"path": row["path"], "class": row["class"],
            "probability": row["score"] if row["score_kind"] == "probability" else float("nan"),
            "margin": row["score"] if row["score_kind"] == "margin" else float("nan"),
            "top_classes": [c for c, _ in row["top_k"]], "top_scores": [s for _, s in row["top_k"]], "error": None}


def write_predictions(path, rows: list[dict]) -> Path:
    """``predictions.csv``: one row per image (see :data:`CSV_COLUMNS` and the module docstring), written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, quoting=csv.QUOTE_ALL)
    w.writeheader()
    for r in map(prediction_record, rows):
        if r["error"] is not None:
            w.writerow({"path": neutralise(r["path"]), "error": neutralise(r["error"])})
            continue
        w.writerow({"path": neutralise(r["path"]), "class": neutralise(r["class"]),
                    **{k: "" if np.isnan(r[k]) else f"{r[k]:.6f}" for k in ("probability", "margin")},
                    "top_classes": json.dumps(r["top_classes"], ensure_ascii=False),
                    "top_scores": json.dumps([round(s, 6) for s in r["top_scores"]]), "error": ""})
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, buf.getvalue())
    except OSError as exc:
        raise UserInputError(f"cannot write --out {path} ({exc.strerror or exc.__class__.__name__}); "
                             f"give a writable file path") from None
