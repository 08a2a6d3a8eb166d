"""What the report shows of the chosen head's mistakes on the test split: per-class precision, recall, F1
and accuracy with its standard error, the most-confused class pairs, and a gallery of the test images it
got most confidently wrong.

Rule: the figures come from the chosen head's test predictions (:func:`transferlab.pipeline.chosen.fit_chosen`);
the gallery's scores from that saved head (arrays, never a pickle) on the cached test features, its images
from the data spec the cache was written from, accepted only when the data's fingerprint is still the
cache's (else the report says in one line why there is no gallery). Every data string reaches the page
through :mod:`transferlab.pipeline.html`'s escaping. Writes no file of its own.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from transferlab.util import UserInputError

from .decision import stderr
from .html import gallery_html, md_row, md_text

GALLERY_MAX = 24  # thumbnails at most
THUMB_PX = 64  # a thumbnail's longer side
PAIRS_MAX = 5  # most-confused pairs listed
NOISY_SUPPORT = 50  # fewer test images than this in a class: its figures are called noisy


def class_metrics(labels, predictions, n_classes: int) -> dict:
    """scikit-learn's ``classification_report`` of classes ``0..n_classes-1``, with per-class accuracy and its se.

    Returns ``{"classes": [{"precision", "recall", "f1", "support", "accuracy", "accuracy_se"}, ...],
    "macro": {"precision", "recall", "f1"}, "accuracy"}``; a class with no test images (or no predictions, for
    precision) has NaN where the figure is undefined. Per-class accuracy is the recall (the share of the class
    predicted right); its standard error is :func:`transferlab.pipeline.decision.stderr`, sqrt(p (1 - p) / n).
    The report is keyed by class index, so a class named ``accuracy`` or ``macro avg`` cannot collide.
    """
    from sklearn.metrics import classification_report

    keys = [str(i) for i in range(n_classes)]
    report = classification_report(np.asarray(labels), np.asarray(predictions), labels=np.arange(n_classes),
                                    target_names=keys, output_dict=True, zero_division=np.nan)
    classes = []
    for key in keys:
        r = report[key]
        n = int(r["support"])
        acc = float(r["recall"]) if n else float("nan")
        classes.append({"precision": float(r["precision"]), "recall": acc, "f1": float(r["f1-score"]),
                        "support": n, "accuracy": acc, "accuracy_se": stderr(acc, n)})
    macro = report["macro avg"]
    accuracy = float(np.mean(np.asarray(labels) == np.asarray(predictions))) if len(labels) else float("nan")
    return {"classes": classes, "accuracy": accuracy,
            "macro": {"precision": float(macro["precision"]), "recall": float(macro["recall"]),
                      "f1": float(macro["f1-score"])}}


def confused_pairs(cm, top: int = PAIRS_MAX) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells of a confusion matrix (rows: true class) as ``(true, predicted,
    count)``, largest first (ties: the earlier true, then predicted class); empty cells are left out."""
    cm = np.asarray(cm)
    cells = [(int(cm[t, p]), t, p) for t in range(cm.shape[0]) for p in range(cm.shape[1]) if t != p and cm[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(t, p, n) for n, t, p in cells[:top]]


def worst_errors(labels, predictions, confidence, limit: int = GALLERY_MAX) -> np.ndarray:
    """Positions of the wrong predictions, the highest ``confidence`` (the score of the predicted class) first,
    ties in row order; at most ``limit``."""
    labels, predictions, confidence = np.asarray(labels), np.asarray(predictions), np.asarray(confidence, float)
    wrong = np.flatnonzero(labels != predictions)
    return wrong[np.lexsort((wrong, -confidence[wrong]))][:limit]


def thumbnail_png(image: np.ndarray, size: int = THUMB_PX) -> bytes:
    """An (H,W[,C]) uint8 image as a PNG whose longer side is ``size`` px (small images enlarged by nearest
    neighbour, so a digit's pixels stay sharp)."""
    from PIL import Image

    from transferlab.features.images import to_rgb_uint8

    im = Image.fromarray(np.ascontiguousarray(to_rgb_uint8(np.asarray(image)[None])[0]))
    scale = size / max(im.size)
    target = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(target, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def predicted_confidence(head_dir, cache_file, layer: str, predictions) -> tuple[np.ndarray, str, np.ndarray]:
    """The saved head's score for its predicted class on each cached test row, the score's kind
    (``probability`` or ``margin``: :func:`transferlab.pipeline.predict.head_scores`) and the rows' sample ids."""
    from transferlab.classifiers import load_head
    from transferlab.features.cache import load_split

    from .predict import head_scores

    head, _ = load_head(head_dir)  # arrays only: allow_pickle stays False
    X, _, ids = load_split(cache_file, "test", layer)
    scores, kind = head_scores(head, X)
    classes = list(np.asarray(getattr(head, "classes_", np.arange(scores.shape[1]))).tolist())
    cols = np.array([classes.index(p) if p in classes else -1 for p in np.asarray(predictions).tolist()])
    conf = np.where(cols >= 0, scores[np.arange(len(cols)), np.maximum(cols, 0)], -np.inf)
    return conf, kind, ids


def load_test_images(cache_file, config: dict, ids) -> list[tuple[np.ndarray | None, str]]:
    """The test images of sample ids ``ids`` from the data the cache was written from, each with its file name
    (empty for in-memory data); an unreadable file gives ``(None, name)``.

    Raises UserInputError when the data cannot be loaded or is no longer the cached data (its fingerprint).
    """
    from transferlab.features import load_dataset
    from transferlab.features.cache import read_cache_meta

    meta = read_cache_meta(cache_file)
    spec = meta.get("data") or config.get("data")
    dataset = load_dataset(spec, seed=int(config.get("seed") or 0), test_fraction=config.get("test_fraction"),
                           fingerprint=config.get("fingerprint") or "stat")
    if dataset.fingerprint != meta.get("data_fingerprint"):
        raise UserInputError(f"the data {spec} is no longer the data its features were cached from")
    split = dataset.splits.get("test")
    where = {int(i): k for k, i in enumerate(split.ids)} if split is not None else {}
    missing = [int(i) for i in ids if int(i) not in where]
    if missing:
        raise UserInputError(f"the test split of {spec} lacks sample {missing[0]} of the cache")
    out = []
    for i in ids:
        k = where[int(i)]
        if split.in_memory:
            out.append((split.images[k], ""))
            continue
        path = Path(split.paths[k])
        from transferlab.features.images import read_image

        try:
            out.append((read_image(path, bool(meta.get("exif_transpose", True))), path.name))
        except UserInputError:
            out.append((None, path.name))
    return out


def _figure(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.3f}"


def per_class_lines(ev: dict) -> list[str]:
    """The per-class table (precision, recall = per-class accuracy with its se, F1, support) and its noise note."""
    names = ev["class_names"]
    m = class_metrics(ev["labels"], ev["predictions"], len(names))
    lines = [md_row("class", "test images", "precision", "recall (per-class accuracy)", "± se", "F1"),
             "|---|---|---|---|---|---|"]
    for name, c in zip(names, m["classes"]):
        lines.append(md_row(name, c["support"], _figure(c["precision"]), _figure(c["accuracy"]),
                            _figure(c["accuracy_se"]), _figure(c["f1"])))
    counts = [c["support"] for c in m["classes"] if c["support"]]
    lines.append("")
    macro = m["macro"]
    lines.append(f"Macro average (scikit-learn's `classification_report`): precision {_figure(macro['precision'])}, "
                 f"recall {_figure(macro['recall'])}, F1 {_figure(macro['f1'])}.")
    if counts:
        n = min(counts)
        noisy = ("These are noisy: " if n < NOISY_SUPPORT else "")
        lines[-1] += (f" {noisy}{'t' if noisy else 'T'}he smallest class has {n} test image{'s' * (n != 1)}, so one "
                      f"image moves its accuracy by {1 / n:.3f} and its standard error (± se: binomial, "
                      f"sqrt(p (1 - p) / n), at least 1 / (2 n)) is up to {0.5 / np.sqrt(n):.3f}; read a difference "
                      "between classes against it.")
    return lines + [""]


def confused_lines(ev: dict) -> list[str]:
    """The most-confused class pairs, from the confusion matrix's off-diagonal cells."""
    names, cm = ev["class_names"], np.asarray(ev["confusion"])
    pairs = confused_pairs(cm)
    lines = ["### Most-confused classes", ""]
    if not pairs:
        return lines + ["No test image was misclassified.", ""]
    lines += [md_row("true class", "predicted as", "test images", "share of the true class"), "|---|---|---|---|"]
    for t, p, n in pairs:
        lines.append(md_row(names[t], names[p], n, f"{n / cm[t].sum():.3f}"))
    return lines + [""]


def gallery_lines(ev: dict, config: dict, limit: int = GALLERY_MAX) -> list[str]:
    """The gallery of the test images the chosen head got most confidently wrong, or one line saying why not."""
    row, names = ev["row"], ev["class_names"]
    labels, pred = np.asarray(ev["labels"]), np.asarray(ev["predictions"])
    n_wrong = int(np.sum(labels != pred))
    lines = ["### Most confidently wrong test images", ""]
    if not n_wrong:
        return lines + ["The chosen head got every test image right.", ""]
    try:
        conf, kind, ids = predicted_confidence(ev["dir"], row["cache_file"], row["layer"], pred)
        worst = worst_errors(labels, pred, conf, limit)
        images = load_test_images(row["cache_file"], config, ids[worst])
        items = [{"png": None if image is None else thumbnail_png(image), "true": names[labels[k]],
                  "predicted": names[pred[k]], "score": f"{kind} {conf[k]:.3f}", "file": name}
                 for k, (image, name) in zip(worst, images)]
    except (UserInputError, OSError, ValueError, KeyError) as exc:
        return lines + [f"No gallery: the test images could not be loaded ({md_text(exc)}).", ""]
    if n_wrong == 1:
        said = f"The one test image the chosen head got wrong (true class, predicted class, its {kind}):"
    else:
        which = f"The {len(items)} of its {n_wrong}" if len(items) < n_wrong else f"All {n_wrong}"
        said = (f"{which} test errors the chosen head made with the highest {kind} for the class it predicted, "
                f"most confident first (true class, predicted class, its {kind}):")
    return lines + [said, "", gallery_html(items), ""]


def mistakes_lines(ev: dict, config: dict) -> list[str]:
    """The chosen head's per-class table, most-confused pairs and gallery, as report lines."""
    return per_class_lines(ev) + confused_lines(ev) + gallery_lines(ev, config)
