"""The sweep's report: ``depth_vs_accuracy.png``, ``report.md`` and ``report.html``.

All are derived from ``results.csv`` and written whole and atomically (``transferlab.util``): a
kill leaves the previous version, which the next run or ``finetune --append-to`` replaces. The
pictures are drawn by :mod:`transferlab.pipeline.plots` (the chosen head's confusion matrix by
:mod:`transferlab.pipeline.chosen`), the page by :mod:`transferlab.pipeline.html`.
"""
from __future__ import annotations

import json
from pathlib import Path

from transferlab.util import atomic_write, write_json

from .curves import best_per_curve, curves, decision_of, evidence_from_rows
from .decision import decide
from .html import md_code, md_inline, md_row, md_text, write_html
from .plots import PICTURES, depth_curve, write_pictures
from .results import read_rows


def decision_section(rows: list[dict], class_counts: dict | None) -> tuple[list[str], object]:
    """The report's headline: the validation choice with its noise, its test accuracy, and the regime."""
    best = best_per_curve(rows)
    if not best:
        return ["No results yet."], None
    top = best[0]
    lines = []
    if top["val_choice"] is None:
        lines.append("No validation rows could be held out, so no layer is chosen on data.")
    else:
        shots = f", {md_text(top['shots'])}-shot" if top["shots"] else ""
        lines.append(
            f"**Chosen on validation: {md_code(top['val_choice'])}** ({md_text(top['backbone'])}, "
            f"{md_text(top['weights'])} weights, {md_text(top['head'])}{shots}): validation accuracy "
            f"{top['val_choice_val']:.3f} ± {top['val_choice_se']:.3f} (standard error, {top['n_val']} validation "
            f"rows); its test accuracy {top['val_choice_test']:.3f}. The last layer {md_code(top['last_layer'])}: "
            f"validation {top['last_val']:.3f}, test {top['last_test']:.3f}.")
    ev = evidence_from_rows(rows, class_counts)
    decision = decide(ev) if ev is not None else None
    if decision is not None:
        lines += ["", f"**Recommendation: {decision.strategy}** (runner-up {decision.runner_up}"
                  f"{'; a close call' if decision.close else ''}). Evidence:", ""]
        lines += [f"- {md_inline(r)}" for r in decision.reasons]
        lines += ["", "Thresholds: " + ", ".join(f"{k} = {v}" for k, v in decision.thresholds.items())
                  + ". `transferlab advise` measures more (source confidence, kNN, LogME, learning curve)."]
    edges = sorted({(r["layer"], r["head"]) for r in rows if "grid edge" in str(r.get("notes", ""))})
    if edges:
        lines += ["", f"Warning: the chosen hyperparameter sits on the edge of its grid for "
                  f"{len(edges)} layer/head pair(s) ({', '.join(md_text(f'{l}/{h}') for l, h in edges[:6])}"
                  f"{', ...' if len(edges) > 6 else ''}): rerun with `--full-grid` to widen it."]
    return lines, decision


def _listed(values) -> str:
    return ", ".join(md_text(v) for v in values)


def write_report(out: Path, summary: dict, log=None) -> Path:
    """Write the pictures, ``report.md`` and ``report.html`` of ``summary`` into ``out``; every string from
    data goes through :mod:`transferlab.pipeline.html`'s escaping."""
    out = Path(out)
    rows = summary["rows"]
    depth_curve(rows, out / "depth_vs_accuracy.png", len(summary.get("class_names") or []) or None)
    cfg, timing = summary["config"], summary["timing"]
    best = best_per_curve(rows)
    lines = ["# TransferLab sweep", "",
             f"Data {md_code(cfg['data'])}, backbone {_listed(cfg['backbone'])}, weights {_listed(cfg['weights'])}, "
             f"pooling {_listed(cfg['pool'])}, image size {_listed(cfg['image_size'])}, heads "
             f"{_listed(cfg['heads'])}" + (f", shots {_listed(cfg['shots'])}" if cfg["shots"] else "") +
             f", {md_text(cfg['repeats'])} repeat(s), seed {md_text(cfg['seed'])}." +
             (f" Data layout: {md_text(summary['data_layout'])}." if summary.get("data_layout") else ""), "",
             "![depth against accuracy](depth_vs_accuracy.png)", "", "## Decision", ""]
    headline, _ = decision_section(rows, summary.get("class_counts"))
    lines += headline + [""]
    lines += write_pictures(out, summary, log)
    lines += ["## Layer chosen on validation, per curve", "",
              md_row("backbone", "weights", "pool", "size", "head", "shots", "chosen on val", "val ± se", "its test",
                     "last layer val", "last layer test"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        lines.append(md_row(b["backbone"], b["weights"], b["pool"], b["image_size"], b["head"], b["shots"] or "all",
                            b["val_choice"] or "none (no validation rows)",
                            f"{b['val_choice_val']:.3f} ± {b['val_choice_se']:.3f}", f"{b['val_choice_test']:.3f}",
                            f"{b['last_val']:.3f}", f"{b['last_test']:.3f}"))
    lines += ["", "## All results", "",
              md_row("backbone", "weights", "pool", "size", "layer", "depth", "dim", "head", "shots", "val", "test",
                     "fit s"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, pts in curves(rows).items():
        for p in pts:
            sd = f" ± {p['test_std']:.3f} (sd, {p['n']} repeats)" if p["n"] > 1 else ""
            lines.append(md_row(key[0], key[1], key[2], key[3], p["layer"], p["depth"], p["dim"], key[4],
                                key[5] or "all", f"{p['val']:.3f}", f"{p['test']:.3f}{sd}", f"{p['fit_seconds']:.2f}"))
    lines += ["", "## Time and cache", "",
              f"Extraction (backbone forward passes, or cache reads): {timing['extract_seconds']:.1f} s; "
              f"training heads: {timing['train_seconds']:.1f} s ({timing['fits_run']} fits run, "
              f"{timing['fits_reused']} reused from an earlier run).", "", "Cache files:", ""]
    lines += [f"- {md_code(c)}" for c in summary["cache_files"]]
    lines += ["", "Configuration and versions: `results.json`."]
    path = atomic_write(out / "report.md", "\n".join(lines) + "\n")
    write_html(path, PICTURES)
    return path


def refresh_report(out: "str | Path") -> Path | None:
    """Rewrite ``results.json`` and the report of a sweep directory from its ``results.csv``.

    Used when rows are added after the sweep (``finetune --append-to``), so the report shows
    fine-tuning beside the cached-feature heads. Returns None when ``out`` holds no sweep.
    """
    out = Path(out)
    summary_path = out / "results.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    summary["rows"] = read_rows(out / "results.csv")
    summary["decision"] = decision_of(summary)
    write_json(summary_path, summary)
    return write_report(out, summary)
