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
    standard deviations (ddof=1), the repeat count and the validation row count.
    """
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
                        "dim": r0.get("dim", ""), "test": _mean(test), "test_std": _sd(test),
                        "val": _mean(val), "val_std": _sd(val), "n": len(rs),
                        "n_val": int(_f(r0.get("n_val"), 0)), "notes": r0.get("notes", ""),
                        "fit_seconds": float(np.mean([_f(x.get("fit_seconds"), 0.0) for x in rs]))})
        out[key] = sorted(pts, key=lambda p: (p["depth"], p["layer"]))
    return dict(sorted(out.items(), key=lambda kv: _shots_key(kv[0])))


def _label(key, keys) -> str:
    parts = []
    for i, name in enumerate(("backbone", "weights", "pool", "size", "head", "shots")):
        if len({k[i] for k in keys}) > 1 or name == "head":
            v = key[i]
            parts.append(f"{v}-shot" if name == "shots" and v else (f"{v}px" if name == "size" else v))
    return " / ".join(p for p in parts if p)


def best_per_curve(rows: list[dict]) -> list[dict]:
    """Per curve: the layer chosen on *validation* accuracy (ties: the deeper), its test accuracy, and the last layer.

    The test accuracy of the choice is reported beside it; it never takes part in the choice.
    Curves without validation accuracy (no validation rows could be held out) have no choice.
    """
    from .decision import stderr

    out = []
    for key, pts in curves(rows).items():
        if str(key[4]).startswith("finetune:"):
            continue
        scored = [p for p in pts if np.isfinite(p["val"])]
        last = pts[-1]
        choice = max(scored, key=lambda p: (p["val"], p["depth"])) if scored else None
        out.append({"backbone": key[0], "weights": key[1], "pool": key[2], "image_size": key[3], "head": key[4],
                    "shots": key[5], "val_choice": choice["layer"] if choice else None,
                    "val_choice_depth": choice["rel_depth"] if choice else None,
                    "val_choice_val": choice["val"] if choice else float("nan"),
                    "val_choice_se": stderr(choice["val"], choice["n_val"]) if choice else float("nan"),
                    "val_choice_test": choice["test"] if choice else float("nan"),
                    "last_layer": last["layer"], "last_val": last["val"], "last_test": last["test"],
                    "n_val": choice["n_val"] if choice else 0, "n_layers": len(pts)})
    return sorted(out, key=lambda b: -(b["val_choice_val"] if np.isfinite(b["val_choice_val"]) else -1))


def evidence_from_rows(rows: list[dict], class_counts: dict | None):
    """The decision's evidence from a sweep: its best pretrained all-data curve (on validation),
    random weights' best, and the class sizes."""
    from .decision import Evidence, LayerPoint

    best = [b for b in best_per_curve(rows) if not b["shots"] and b["val_choice"]]
    pre = [b for b in best if b["weights"] == "imagenet"] or best
    if not pre or not class_counts:
        return None
    top = pre[0]
    key = (top["backbone"], top["weights"], top["pool"], top["image_size"], top["head"], top["shots"])
    curve = [LayerPoint(p["layer"], p["rel_depth"], p["val"], p["n_val"]) for p in curves(rows)[key]
             if np.isfinite(p["val"])]
    rnd = [b for b in best if b["weights"] == "random" and b["backbone"] == top["backbone"]]
    counts = np.array(list(class_counts.values()), dtype=float)
    return Evidence(n_train=int(counts.sum()), n_classes=int(counts.size), per_class_min=int(counts.min()),
                    per_class_median=float(np.median(counts)), curve=curve,
                    random_best=max(b["val_choice_val"] for b in rnd) if rnd else None,
                    random_n_val=rnd[0]["n_val"] if rnd else None, weights=top["weights"])


def decision_section(rows: list[dict], class_counts: dict | None) -> tuple[list[str], object]:
    """The report's headline: the validation choice with its noise, its test accuracy, and the regime."""
    from .decision import decide

    best = best_per_curve(rows)
    if not best:
        return ["No results yet."], None
    top = best[0]
    lines = []
    if top["val_choice"] is None:
        lines.append("No validation rows could be held out, so no layer is chosen on data.")
    else:
        lines.append(
            f"**Chosen on validation: `{top['val_choice']}`** ({top['backbone']}, {top['weights']} weights, "
            f"{top['head']}{', ' + str(top['shots']) + '-shot' if top['shots'] else ''}): validation accuracy "
            f"{top['val_choice_val']:.3f} ± {top['val_choice_se']:.3f} (standard error, {top['n_val']} validation "
            f"rows); its test accuracy {top['val_choice_test']:.3f}. The last layer `{top['last_layer']}`: validation "
            f"{top['last_val']:.3f}, test {top['last_test']:.3f}.")
    ev = evidence_from_rows(rows, class_counts)
    decision = decide(ev) if ev is not None else None
    if decision is not None:
        lines += ["", f"**Recommendation: {decision.strategy}** (runner-up {decision.runner_up}"
                  f"{'; a close call' if decision.close else ''}). Evidence:", ""]
        lines += [f"- {r}" for r in decision.reasons]
        lines += ["", "Thresholds: " + ", ".join(f"{k} = {v}" for k, v in decision.thresholds.items())
                  + ". `transferlab advise` measures more (source confidence, kNN, LogME, learning curve)."]
    edges = sorted({(r["layer"], r["head"]) for r in rows if "grid edge" in str(r.get("notes", ""))})
    if edges:
        lines += ["", f"Warning: the chosen hyperparameter sits on the edge of its grid for "
                  f"{len(edges)} layer/head pair(s) ({', '.join(f'{l}/{h}' for l, h in edges[:6])}"
                  f"{', ...' if len(edges) > 6 else ''}): rerun with `--full-grid` to widen it."]
    return lines, decision


def write_report(out: Path, summary: dict, log=None) -> Path:
    out = Path(out)
    from .html import write_html
    from .plots import depth_curve, write_pictures

    rows = summary["rows"]
    depth_curve(rows, out / "depth_vs_accuracy.png", len(summary.get("class_names") or []) or None)
    cfg, timing = summary["config"], summary["timing"]
    best = best_per_curve(rows)
    lines = ["# TransferLab sweep", "",
             f"Data `{cfg['data']}`, backbone {', '.join(cfg['backbone'])}, weights {', '.join(cfg['weights'])}, "
             f"pooling {', '.join(cfg['pool'])}, image size {', '.join(map(str, cfg['image_size']))}, heads "
             f"{', '.join(cfg['heads'])}" + (f", shots {cfg['shots']}" if cfg["shots"] else "") +
             f", {cfg['repeats']} repeat(s), seed {cfg['seed']}." +
             (f" Data layout: {summary['data_layout']}." if summary.get("data_layout") else ""), "",
             "![depth against accuracy](depth_vs_accuracy.png)", "", "## Decision", ""]
    headline, _ = decision_section(rows, summary.get("class_counts"))
    lines += headline + [""]
    lines += write_pictures(out, summary, log)
    lines += ["## Layer chosen on validation, per curve", "",
              "| backbone | weights | pool | size | head | shots | chosen on val | val ± se | its test | last layer val | last layer test |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        lines.append(f"| {b['backbone']} | {b['weights']} | {b['pool']} | {b['image_size']} | {b['head']} | {b['shots'] or 'all'} "
                     f"| {b['val_choice'] or 'none (no validation rows)'} | {b['val_choice_val']:.3f} ± {b['val_choice_se']:.3f} "
                     f"| {b['val_choice_test']:.3f} | {b['last_val']:.3f} | {b['last_test']:.3f} |")
    lines += ["", "## All results", "",
              "| backbone | weights | pool | size | layer | depth | dim | head | shots | val | test | fit s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, pts in curves(rows).items():
        for p in pts:
            sd = f" ± {p['test_std']:.3f} (sd, {p['n']} repeats)" if p["n"] > 1 else ""
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
    from .sweep import decision_of

    summary["decision"] = decision_of(summary)
    write_json(summary_path, summary)
    return write_report(out, summary)
