"""Depth curves from ``results.csv`` rows, the layer chosen on validation, and the decision's inputs.

One home for what the report, its pictures, the chosen head, ``train --layer best`` and the sweep
read from the rows: a *curve* is one (backbone, weights, pooling, size, head, shots) with its
points in depth order; the *choice on validation* is the point with the best mean validation
accuracy over repeats, ties going to the deeper layer (test accuracy never takes part); a
*fine-tuning row* is one whose head is ``finetune:MODE``. Pure functions of the rows: nothing here
reads or writes a file.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from transferlab.classifiers.names import MULTI_HEAD
from transferlab.util import UserInputError

from .decision import Evidence, LayerPoint, decide, stderr

FINETUNE_PREFIX = "finetune:"


def is_finetune(head) -> bool:
    """Whether a row's ``head`` names a fine-tuning run (``finetune:MODE``) rather than a head on cached features."""
    return str(head or "").startswith(FINETUNE_PREFIX)


def is_multilayer(head) -> bool:
    """Whether a row's ``head`` is the multi-layer head: one row per curve, its ``layer`` the chosen layers
    joined by ``+``; it takes no part in choosing a layer."""
    return head == MULTI_HEAD


def number(v, default=float("nan")) -> float:
    """A cell of ``results.csv`` as a float (``default`` for an empty or unreadable cell)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _shots_key(key):
    """Curve keys sort with shots as numbers (1, 5, 10), all-data curves first."""
    shots = key[5]
    return key[:5] + ((0, 0) if shots in ("", None) else (1, int(float(shots))),)


def _sd(a: np.ndarray) -> float:
    """Sample standard deviation over repeats (ddof=1); 0 for a single repeat."""
    a = a[np.isfinite(a)]
    return float(a.std(ddof=1)) if a.size > 1 else 0.0


def _mean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def curves(rows: list[dict]) -> dict:
    """Group rows into curves: (backbone, weights, pool, size, head, shots) -> points in depth order.

    Each point holds the mean over repeats of the validation and test accuracy, their sample
    standard deviations (ddof=1), the repeat count, the validation row count and its first row (``row``).
    """
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = (r["backbone"], r["weights"], r.get("pool", ""), str(r.get("image_size", "")), r["head"],
               str(r.get("shots", "")))
        acc[key][r["layer"]].append(r)
    out = {}
    for key, layers in acc.items():
        pts = []
        for layer, rs in layers.items():
            test = np.array([number(x["test_accuracy"]) for x in rs])
            val = np.array([number(x["val_accuracy"]) for x in rs])
            r0 = rs[0]
            pts.append({"layer": layer, "depth": int(number(r0["depth"], 0)),
                        "rel_depth": number(r0.get("rel_depth"), 0.0), "dim": r0.get("dim", ""),
                        "test": _mean(test), "test_std": _sd(test), "val": _mean(val), "val_std": _sd(val),
                        "n": len(rs), "n_val": int(number(r0.get("n_val"), 0)), "notes": r0.get("notes", ""),
                        "fit_seconds": float(np.mean([number(x.get("fit_seconds"), 0.0) for x in rs])), "row": r0})
        out[key] = sorted(pts, key=lambda p: (p["depth"], p["layer"]))
    return dict(sorted(out.items(), key=lambda kv: _shots_key(kv[0])))


def curve_label(key, keys) -> str:
    """A curve's name in a legend: its head, and whatever else differs between ``keys``."""
    parts = []
    for i, name in enumerate(("backbone", "weights", "pool", "size", "head", "shots")):
        if len({k[i] for k in keys}) > 1 or name == "head":
            v = key[i]
            parts.append(f"{v}-shot" if name == "shots" and v else (f"{v}px" if name == "size" else v))
    return " / ".join(p for p in parts if p)


def _rank(point: dict | None) -> tuple:
    """The order of the choice on validation: mean validation accuracy, then depth (ties: the deeper)."""
    return (point["val"], point["depth"]) if point is not None else (-1.0, -1)


def chosen_point(points: list[dict]) -> dict | None:
    """The point chosen on validation accuracy (see the module docstring); None when none has one."""
    scored = [p for p in points if np.isfinite(p["val"])]
    return max(scored, key=_rank) if scored else None


def best_per_curve(rows: list[dict]) -> list[dict]:
    """Per probe curve: the layer chosen on *validation* accuracy, its test accuracy, and the last layer.

    The test accuracy of the choice is reported beside it; it never takes part in the choice.
    Curves without validation accuracy (no validation rows could be held out) have no choice.
    Sorted best choice first, by the same rule as within a curve, so the first entry is
    :func:`best_on_validation` of the rows.
    """
    out = []
    for key, pts in curves(rows).items():
        if is_finetune(key[4]):
            continue
        choice = chosen_point(pts)
        last = pts[-1]
        out.append((_rank(choice), {
            "backbone": key[0], "weights": key[1], "pool": key[2], "image_size": key[3], "head": key[4],
            "shots": key[5], "val_choice": choice["layer"] if choice else None,
            "val_choice_depth": choice["rel_depth"] if choice else None,
            "val_choice_val": choice["val"] if choice else float("nan"),
            "val_choice_se": stderr(choice["val"], choice["n_val"]) if choice else float("nan"),
            "val_choice_test": choice["test"] if choice else float("nan"),
            "last_layer": last["layer"], "last_val": last["val"], "last_test": last["test"],
            "n_val": choice["n_val"] if choice else 0, "n_layers": len(pts)}))
    return [b for _, b in sorted(out, key=lambda rb: rb[0], reverse=True)]


def best_on_validation(rows: list[dict]) -> dict:
    """The row of the point chosen on validation among all of ``rows``' curves, with its ``mean_val_accuracy``."""
    choice = chosen_point([p for pts in curves(rows).values() for p in pts])
    if choice is None:
        raise UserInputError("the sweep has no validation accuracies to choose a layer on; name a --layer")
    return dict(choice["row"], mean_val_accuracy=choice["val"])


def finetune_budget(row: dict) -> str:
    """What a fine-tuning row cost, in words: its mode, epochs and image size (``last:2, 5 epochs, 64 px``)."""
    import json

    try:
        params = json.loads(row.get("params") or "{}")
    except ValueError:
        params = {}
    epochs = params.get("epochs")
    parts = [str(row.get("head", ""))[len(FINETUNE_PREFIX):]]
    if epochs not in (None, ""):
        parts.append(f"{epochs} epoch{'' if str(epochs) == '1' else 's'}")
    if row.get("image_size") not in (None, ""):
        parts.append(f"{row['image_size']} px")
    return ", ".join(p for p in parts if p)


def decision_curve(rows: list[dict]) -> dict | None:
    """The configuration the decision measures: the best pretrained all-data probe curve on validation
    (random weights' best only when the rows have no pretrained curve).

    Returns ``{"backbone", "weights", "pool", "image_size", "head", "cache_file", "cache_key", "layers"}``
    (layers in depth order), or None when no curve has validation accuracies.
    """
    best = [b for b in best_per_curve(rows) if not b["shots"] and b["val_choice"] and not is_multilayer(b["head"])]
    pre = [b for b in best if b["weights"] == "imagenet"] or best
    if not pre:
        return None
    top = pre[0]
    key = (top["backbone"], top["weights"], top["pool"], top["image_size"], top["head"], top["shots"])
    pts = curves(rows)[key]
    row = pts[0]["row"]
    return {"backbone": top["backbone"], "weights": top["weights"], "pool": top["pool"],
            "image_size": top["image_size"], "head": top["head"], "cache_file": row.get("cache_file", ""),
            "cache_key": row.get("cache_key", ""), "layers": [p["layer"] for p in pts]}


def evidence_from_rows(rows: list[dict], class_counts: dict | None, measurement: dict | None = None) -> Evidence | None:
    """The decision's evidence from a sweep: the curve of :func:`decision_curve`, random weights' best,
    the best measured fine-tune of that backbone, and the class sizes.

    ``measurement`` (what :func:`transferlab.pipeline.evidence.measure_curve` measured on that curve's
    cache file, as the sweep stores it in ``results.json``) gives every layer measured the same way and
    the paired peak-vs-last gap; without it (or for another cache file) the rows' one-split validation
    accuracies are used, and the decision says its gap is unpaired.
    """
    dc = decision_curve(rows)
    if dc is None or not class_counts:
        return None
    curves_ = curves(rows)
    key = (dc["backbone"], dc["weights"], dc["pool"], dc["image_size"], dc["head"], "")
    peak_gap = None
    if measurement and measurement.get("cache_file") == dc["cache_file"] and measurement.get("points"):
        curve = [LayerPoint(**p) for p in measurement["points"]]
        peak_gap = measurement.get("gap")
    else:
        curve = [LayerPoint(p["layer"], p["rel_depth"], p["val"], p["n_val"]) for p in curves_[key]
                 if np.isfinite(p["val"])]
    best = [b for b in best_per_curve(rows) if not b["shots"] and b["val_choice"] and not is_multilayer(b["head"])]
    rnd = [b for b in best if b["weights"] == "random" and b["backbone"] == dc["backbone"]]
    tuned = [r for r in rows if is_finetune(r.get("head")) and r.get("backbone") == dc["backbone"]
             and r.get("weights") == "imagenet" and np.isfinite(number(r.get("val_accuracy")))]
    ft = max(tuned, key=lambda r: number(r["val_accuracy"])) if tuned else None
    counts = np.array(list(class_counts.values()), dtype=float)
    return Evidence(n_train=int(counts.sum()), n_classes=int(counts.size), per_class_min=int(counts.min()),
                    per_class_median=float(np.median(counts)), curve=curve,
                    random_best=max(b["val_choice_val"] for b in rnd) if rnd else None,
                    random_n_val=rnd[0]["n_val"] if rnd else None, weights=dc["weights"], peak_gap=peak_gap,
                    finetune_val=number(ft["val_accuracy"]) if ft else None,
                    finetune_n_val=int(number(ft.get("n_val"), 0)) or None if ft else None,
                    finetune_budget=finetune_budget(ft) if ft else None)


def decision_of(summary: dict) -> dict | None:
    """The recommendation from a sweep's rows, class counts and stored measurement
    (:func:`transferlab.pipeline.decision.decide`), with the curve it was taken on (``curve``)."""
    rows = summary["rows"]
    ev = evidence_from_rows(rows, summary.get("class_counts"), summary.get("measurement"))
    if ev is None:
        return None
    d = decide(ev).to_dict()
    d["curve"] = decision_curve(rows)
    return d
