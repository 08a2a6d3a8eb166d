"""The sweep's report: ``depth_vs_accuracy.png``, ``report.md`` and ``report.html``.

All are derived from ``results.csv`` and written whole and atomically (``transferlab.util``): a
kill leaves the previous version, which the next run or ``finetune --append-to`` replaces. The
pictures are drawn by :mod:`transferlab.pipeline.plots` (the chosen head's confusion matrix by
:mod:`transferlab.pipeline.chosen`), the page by :mod:`transferlab.pipeline.html`.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from transferlab.util import atomic_write, write_json


def _f(v, default=float("nan")):
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def curves(rows: list[dict]) -> dict:
    """Group rows into curves: (backbone, weights, pool, size, head, shots) -> sorted points with mean/std."""
    acc = defaultdict(lambda: defaultdict(list))
    meta = {}
    for r in rows:
        key = (r["backbone"], r["weights"], r.get("pool", ""), str(r.get("image_size", "")), r["head"], str(r.get("shots", "")))
        acc[key][r["layer"]].append(r)
        meta[(key, r["layer"])] = r
    out = {}
    for key, layers in acc.items():
        pts = []
        for layer, rs in layers.items():
            test = np.array([_f(x["test_accuracy"]) for x in rs])
            val = np.array([_f(x["val_accuracy"]) for x in rs])
            r0 = rs[0]
            pts.append({"layer": layer, "depth": int(_f(r0["depth"], 0)), "rel_depth": _f(r0.get("rel_depth"), 0.0),
                        "dim": r0.get("dim", ""), "test": float(test.mean()), "test_std": float(test.std()),
                        "val": float(val.mean()), "val_std": float(val.std()), "n": len(rs),
                        "fit_seconds": float(np.mean([_f(x.get("fit_seconds"), 0.0) for x in rs]))})
        out[key] = sorted(pts, key=lambda p: p["depth"])
    return out


def _label(key, keys) -> str:
    parts = []
    for i, name in enumerate(("backbone", "weights", "pool", "size", "head", "shots")):
        if len({k[i] for k in keys}) > 1 or name == "head":
            v = key[i]
            parts.append(f"{v}-shot" if name == "shots" and v else (f"{v}px" if name == "size" else v))
    return " / ".join(p for p in parts if p)


def plot(rows: list[dict], path: Path, n_classes: int | None = None) -> None:
    """``depth_vs_accuracy.png``: see :func:`transferlab.pipeline.plots.depth_curve`."""
    from .plots import depth_curve

    depth_curve(rows, path, n_classes)


def best_per_curve(rows: list[dict]) -> list[dict]:
    """Per curve: the layer with the best *validation* accuracy (the honest choice) and the test peak."""
    out = []
    for key, pts in curves(rows).items():
        by_val = max(pts, key=lambda p: (p["val"], -p["depth"]))
        by_test = max(pts, key=lambda p: (p["test"], -p["depth"]))
        last = pts[-1]
        out.append({"backbone": key[0], "weights": key[1], "pool": key[2], "image_size": key[3], "head": key[4],
                    "shots": key[5], "best_layer": by_test["layer"], "best_depth": by_test["depth"],
                    "best_rel_depth": by_test["rel_depth"], "best_test": by_test["test"],
                    "val_choice": by_val["layer"], "val_choice_test": by_val["test"], "last_layer": last["layer"],
                    "last_test": last["test"], "n_layers": len(pts)})
    return sorted(out, key=lambda b: -b["best_test"])


def _reading(best: list[dict]) -> str:
    if not best:
        return "No results yet."
    top = best[0]
    gap = 100 * (top["best_test"] - top["last_test"])
    where = "the last layer" if top["best_layer"] == top["last_layer"] else (
        f"`{top['best_layer']}` (relative depth {top['best_rel_depth']:.2f}), before the end")
    text = [f"The best curve ({top['backbone']}, {top['weights']} weights, {top['head']}) peaks at {where} "
            f"with test accuracy {top['best_test']:.3f}."]
    if top["best_layer"] != top["last_layer"]:
        text.append(f"The last, most specialised layer (`{top['last_layer']}`) trails it by {gap:.1f} points: the "
                    f"intermediate, more generic features transfer better to this data set than the ones "
                    f"specialised to the source task, which points to the *generic-features* regime "
                    f"(a classical head on earlier layers).")
    else:
        text.append("The most specialised layer transfers best, which points to the *linear-probe* regime "
                    "(freeze the network, train a classifier on its last features); fine-tuning is the next step "
                    "when the data set is large.")
    pre = [b for b in best if b["weights"] == "imagenet" and not b["shots"]]
    rnd = [b for b in best if b["weights"] == "random" and not b["shots"]]
    if pre and rnd:
        d = 100 * (max(b["best_test"] for b in pre) - max(b["best_test"] for b in rnd))
        text.append(f"Pretrained weights beat random ones by {d:.1f} points at their best layers "
                    f"(random weights peak at `{max(rnd, key=lambda b: b['best_test'])['best_layer']}`).")
    honest = [b for b in best if b["val_choice"] != b["best_layer"]]
    if honest:
        b = honest[0]
        text.append(f"Choosing the layer on validation accuracy (as one must in practice) picks `{b['val_choice']}` "
                    f"for {b['head']}, test {b['val_choice_test']:.3f}.")
    return " ".join(text)


def write_report(out: Path, summary: dict, log=None) -> Path:
    out = Path(out)
    from .html import write_html
    from .plots import write_pictures

    rows = summary["rows"]
    plot(rows, out / "depth_vs_accuracy.png", len(summary.get("class_names") or []) or None)
    cfg, timing = summary["config"], summary["timing"]
    best = best_per_curve(rows)
    lines = ["# TransferLab sweep", "",
             f"Data `{cfg['data']}`, backbone {', '.join(cfg['backbone'])}, weights {', '.join(cfg['weights'])}, "
             f"pooling {', '.join(cfg['pool'])}, image size {', '.join(map(str, cfg['image_size']))}, heads "
             f"{', '.join(cfg['heads'])}" + (f", shots {cfg['shots']}" if cfg["shots"] else "") +
             f", {cfg['repeats']} repeat(s), seed {cfg['seed']}." +
             (f" Data layout: {summary['data_layout']}." if summary.get("data_layout") else ""), "",
             "![depth against accuracy](depth_vs_accuracy.png)", "", "## Reading", "", _reading(best), "",
             *write_pictures(out, summary, log),
             "## Best layer per head", "",
             "| backbone | weights | pool | size | head | shots | best layer (test) | test | chosen on val | its test | last layer test |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        lines.append(f"| {b['backbone']} | {b['weights']} | {b['pool']} | {b['image_size']} | {b['head']} | {b['shots'] or 'all'} "
                     f"| {b['best_layer']} | {b['best_test']:.3f} | {b['val_choice']} | {b['val_choice_test']:.3f} "
                     f"| {b['last_test']:.3f} |")
    lines += ["", "## All results", "",
              "| backbone | weights | pool | size | layer | depth | dim | head | shots | val | test | fit s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, pts in sorted(curves(rows).items()):
        for p in pts:
            sd = f" ± {p['test_std']:.3f}" if p["n"] > 1 else ""
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {p['layer']} | {p['depth']} | {p['dim']} | "
                         f"{key[4]} | {key[5] or 'all'} | {p['val']:.3f} | {p['test']:.3f}{sd} | {p['fit_seconds']:.2f} |")
    lines += ["", "## Time and cache", "",
              f"Extraction (backbone forward passes, or cache reads): {timing['extract_seconds']:.1f} s; "
              f"training heads: {timing['train_seconds']:.1f} s ({timing['fits_run']} fits run, "
              f"{timing['fits_reused']} reused from an earlier run).", "", "Cache files:", ""]
    lines += [f"- `{c}`" for c in summary["cache_files"]]
    lines += ["", "Configuration and versions: `results.json`."]
    path = atomic_write(out / "report.md", "\n".join(lines) + "\n")
    write_html(path)
    return path


def refresh_report(out: "str | Path") -> Path | None:
    """Rewrite ``results.json`` and the report of a sweep directory from its ``results.csv``.

    Used when rows are added after the sweep (``finetune --append-to``), so the report shows
    fine-tuning beside the cached-feature heads. Returns None when ``out`` holds no sweep.
    """
    from .results import read_rows

    out = Path(out)
    summary_path = out / "results.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    summary["rows"] = read_rows(out / "results.csv")
    write_json(summary_path, summary)
    return write_report(out, summary)
