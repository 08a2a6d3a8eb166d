"""The sweep's report: ``depth_vs_accuracy.png``, ``report.md`` and ``report.html``.

All are derived from ``results.csv`` and written whole and atomically (``transferlab.util``): a
kill leaves the previous version, which the next run or ``finetune --append-to`` replaces. The
pictures are drawn by :mod:`transferlab.pipeline.plots` (the chosen head's confusion matrix by
:mod:`transferlab.pipeline.chosen`, its per-class table, confused pairs and gallery of mistakes by
:mod:`transferlab.pipeline.mistakes`), the page by :mod:`transferlab.pipeline.html`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from transferlab.util import atomic_write, write_json

from .backbone_choice import gap_text
from .curves import best_per_curve, curves, decision_of, is_finetune, number
from .html import md_code, md_inline, md_row, md_text, write_html
from .plots import PICTURES, backbone_curves, depth_curve, similarity_section, write_pictures
from .results import read_rows


def _point(rows: list[dict], curve: dict, head: str, layer: str) -> dict | None:
    """The (mean over repeats) point of ``layer`` on the curve of ``head`` in the decision's configuration."""
    key = (curve.get("backbone"), curve.get("weights"), curve.get("pool"), str(curve.get("image_size")), head, "")
    return next((p for p in curves(rows).get(key, []) if p["layer"] == layer), None)


def decision_section(summary: dict) -> tuple[list[str], dict | None]:
    """The report's one voice: the recommendation, its layer and head (the saved ``chosen_head/``), their
    validation accuracy and noise, the runner-up, whether the test split agrees, and the evidence."""
    from .chosen import chosen_row
    from .decision import stderr

    rows, decision = summary["rows"], summary.get("decision")
    if not best_per_curve(rows):
        return ["No results yet."], None
    row = chosen_row(rows, decision)
    lines = []
    if row is None:
        own = any(r.get("row_key") and r.get("cache_file") for r in rows)
        lines.append("No validation rows could be held out, so no layer is chosen on data." if own else
                     "No row here names the feature cache it was measured on (these are not a sweep's own rows), "
                     "so no head is chosen or saved.")
        return lines, decision
    where = (f"{md_text(row['backbone'])}, {md_text(row['weights'])} weights, {md_text(row['image_size'])} px, "
             f"{md_text(row['pool'])} pooling")
    val, n_val = row["mean_val_accuracy"], int(float(row.get("n_val") or 0))
    said = (f"{md_code(row['layer'])} with the {md_text(row['head'])} head** ({where}): validation accuracy "
            f"{val:.3f} ± {stderr(val, n_val):.3f} (standard error, {n_val} validation rows), test accuracy "
            f"{float(row['test_accuracy']):.3f}. This head is saved in `chosen_head/`.")
    if not decision or not decision.get("strategy"):
        lines.append("**No transfer regime can be named from these rows; the best on validation is " + said)
    else:
        close = (f"; a close call: {md_text(decision['runner_up'])} is nearly as likely" if decision["close"] else "")
        lines.append(f"**Recommendation: {md_text(decision['strategy'])}, at " + said
                     + f" Runner-up: {md_text(decision['runner_up'])}{close}.")
    facts, curve = (decision or {}).get("facts") or {}, (decision or {}).get("curve") or {}
    peak, last = facts.get("peak_layer"), facts.get("last_layer")
    if peak and last and peak != last:
        at_peak, at_last = _point(rows, curve, row["head"], peak), _point(rows, curve, row["head"], last)
        if at_peak and at_last:
            test_gap = at_peak["test"] - at_last["test"]
            agree = (test_gap > 0) == (facts.get("last_gap", 0) > 0)
            n_test = _test_rows(row.get("cache_file"))
            noise = (f" ± {100 * math.hypot(stderr(at_peak['test'], n_test), stderr(at_last['test'], n_test)):.1f}, "
                     f"unpaired, on {n_test} test rows" if n_test else "")
            lines += ["", f"On validation ({md_text(facts.get('gap_method', ''))}) the peak {md_code(peak)} leads the "
                      f"last layer {md_code(last)} by {100 * facts['last_gap']:.1f} ± {100 * facts['gap_se']:.1f} "
                      f"points. On test, reported and never used to choose, the {md_text(row['head'])} head at "
                      f"{md_code(peak)} scores {at_peak['test']:.3f} and at {md_code(last)} {at_last['test']:.3f} "
                      f"({100 * test_gap:+.1f} points{noise}): the test split "
                      f"{'points the same way' if agree else 'points the other way'}."]
    if decision:
        lines += ["", "Evidence:", ""] + [f"- {md_inline(r)}" for r in decision["reasons"]]
        lines += ["", "Thresholds: " + ", ".join(f"{k} = {v}" for k, v in decision["thresholds"].items())
                  + ". `transferlab advise` measures more (source confidence, kNN, LogME, learning curve)."]
    edges = sorted({(r["layer"], r["head"]) for r in rows if "grid edge" in str(r.get("notes", ""))})
    if edges:
        lines += ["", f"Warning: the chosen hyperparameter sits on the edge of its grid for "
                  f"{len(edges)} layer/head pair(s) ({', '.join(md_text(f'{l}/{h}') for l, h in edges[:6])}"
                  f"{', ...' if len(edges) > 6 else ''}): rerun with `--full-grid` to widen it."]
    return lines, decision


def backbone_section(out: Path, summary: dict) -> list[str]:
    """"Which backbone" (two or more candidates; :mod:`transferlab.pipeline.backbone_choice`): the pick in one
    sentence, ``backbones.png`` and the table of candidates with their noise and cost."""
    choice = summary.get("backbone_choice")
    if backbone_curves(choice, Path(out) / "backbones.png") is None:
        return []
    cands = choice["candidates"]
    lines = ["## Which backbone", "",
             f"**Pick: {md_text(choice['pick'])}**: {md_text(choice['reason'])}.", "",
             f"Each candidate at its own peak layer on validation, measured the same way ({md_text(choice['probe'])} "
             f"probe, {md_text(choice['pool'])} pooling, {md_text(choice['image_size'])} px); the gap to the most "
             f"accurate is {md_text(choice['statistic'])} on the same rows, a tie within {choice['z']:g} standard "
             f"errors, and among ties the cheaper wins: more than {100 * choice['rate_margin']:.0f}% more images "
             f"per second, else fewer bytes per image. Images/s: {md_text(cands[0]['rate_how'])}; bytes/image: "
             f"the chosen layer's stored dimension times its dtype's size.", "",
             "![depth curves of the backbones](backbones.png)", "",
             md_row("candidate", "chosen layer", "val ± se", "paired gap to the best ± se", "images/s", "bytes/image",
                    "verdict"), "|---|---|---|---|---|---|---|"]
    for c in cands:
        rate = "not measured" if not c["images_per_s"] else f"{c['images_per_s']:.0f}"
        lines.append(md_row(c["name"], c["layer"], f"{c['val']:.3f} ± {c['se']:.3f}", gap_text(c["gap"]), rate,
                            c["bytes_per_image"], c["verdict"]))
    return lines + [""]


def _test_rows(cache_file) -> int | None:
    """The test split's size from the cache file's attributes (None when it cannot be read)."""
    from transferlab.features.cache import read_status

    try:
        status = read_status(cache_file) if cache_file else None
    except Exception:  # another process writing it: the headline goes without the test's noise
        return None
    n = ((status or {}).get("splits", {}).get("test") or {}).get("n_total")
    return int(n) if n else None


def _chosen_mark(summary: dict) -> dict | None:
    """The depth plot's marker: the recommended row (as :func:`transferlab.pipeline.chosen.chosen_row`) and the
    strategy."""
    from .chosen import chosen_row

    row = chosen_row(summary["rows"], summary.get("decision"))
    if row is None:
        return None
    return {"row": row, "strategy": (summary.get("decision") or {}).get("strategy")}


# a curve's key fields (curves()' key order) with their names in the table and in the line of constants
_KEY_FIELDS = (("backbone", "backbone"), ("weights", "weights"), ("pool", "pooling"), ("size", "image size"),
              ("head", "head"), ("shots", "shots"))


def _curve_order(key: tuple) -> tuple:
    """The order of curves in the results table: probes before fine-tuning, then backbone, weights, pooling,
    image size (as a number), head, and shots (as a number, the full training data first)."""
    size, shots = number(key[3], -1.0), key[5]
    return (is_finetune(key[4]), key[0], key[1], key[2], size, key[3], key[4],
            (0, 0.0) if shots in ("", None) else (1, number(shots, 0.0)))


def _key_value(i: int, value, prose: bool = False) -> str:
    if _KEY_FIELDS[i][0] == "shots":
        return value or "all"
    if _KEY_FIELDS[i][0] == "size" and prose:
        return "the backbone's own" if str(value) == "0" else f"{value} px"
    return value


def results_table(rows: list[dict], decision: dict | None = None) -> list[str]:
    """The "All results" table: one line per (curve, layer) point, curves in :func:`_curve_order` and layers by
    depth; the curve fields that are the same in every row said once above it, the recommended row (as
    :func:`transferlab.pipeline.chosen.chosen_row`) marked with a star."""
    from .chosen import chosen_row

    cs = curves(rows)
    keys = sorted(cs, key=_curve_order)
    if not keys:
        return ["No results yet."]
    constant = [i for i in range(len(_KEY_FIELDS)) if len({k[i] for k in keys}) == 1]
    varying = [i for i in range(len(_KEY_FIELDS)) if i not in constant]
    chosen = chosen_row(rows, decision)
    mark = None if chosen is None else (
        (chosen["backbone"], chosen["weights"], chosen.get("pool", ""), str(chosen.get("image_size", "")),
         chosen["head"], str(chosen.get("shots", ""))), chosen["layer"])
    lines = []
    if constant:
        same = ", ".join(f"{_KEY_FIELDS[i][1]} {md_text(_key_value(i, keys[0][i], prose=True))}" for i in constant)
        lines += [f"Same in every row: {same}." + (" ★ marks the recommended layer and head." if mark else ""), ""]
    head = ["chosen"] + [_KEY_FIELDS[i][0] for i in varying if i < 4] + ["layer", "depth", "dim"] + \
        [_KEY_FIELDS[i][0] for i in varying if i >= 4] + ["val", "test", "fit s"]
    lines += [md_row(*head), "|" + "---|" * len(head)]
    for key in keys:
        for p in cs[key]:
            sd = f" ± {p['test_std']:.3f} (sd, {p['n']} repeats)" if p["n"] > 1 else ""
            star = "★" if mark == (key, p["layer"]) else ""
            cells = [star] + [_key_value(i, key[i]) for i in varying if i < 4] + [p["layer"], p["depth"], p["dim"]] + \
                [_key_value(i, key[i]) for i in varying if i >= 4] + \
                [f"{p['val']:.3f}", f"{p['test']:.3f}{sd}", f"{p['fit_seconds']:.2f}"]
            lines.append(md_row(*cells))
    return lines


def _listed(values) -> str:
    return ", ".join(md_text(v) for v in values)


def _sizes(summary: dict) -> str:
    """The image sizes, each with how it was chosen (``image_size_from``, when recorded)."""
    how = summary.get("image_size_from")
    how = how if isinstance(how, list) else []
    parts = []
    for i, v in enumerate(summary["config"]["image_size"]):
        shown = "the backbone's own" if str(v) == "0" else f"{md_text(v)} px"
        parts.append(shown + (f" ({md_text(how[i])})" if i < len(how) else ""))
    return ", ".join(parts)


def write_report(out: Path, summary: dict, log=None) -> Path:
    """Write the pictures, ``report.md`` and ``report.html`` of ``summary`` into ``out``; every string from
    data goes through :mod:`transferlab.pipeline.html`'s escaping."""
    out = Path(out)
    rows = summary["rows"]
    depth_curve(rows, out / "depth_vs_accuracy.png", len(summary.get("class_names") or []) or None,
                chosen=_chosen_mark(summary))
    cfg, timing = summary["config"], summary["timing"]
    best = best_per_curve(rows)
    lines = ["# TransferLab sweep", "",
             f"Data {md_code(cfg['data'])}, backbone {_listed(cfg['backbone'])}, weights {_listed(cfg['weights'])}, "
             f"pooling {_listed(cfg['pool'])}, image size {_sizes(summary)}, heads "
             f"{_listed(cfg['heads'])}" + (f", shots {_listed(cfg['shots'])}" if cfg["shots"] else "") +
             f", {md_text(cfg['repeats'])} repeat(s), seed {md_text(cfg['seed'])}." +
             (f" Data layout: {md_text(summary['data_layout'])}." if summary.get("data_layout") else ""), "",
             "![depth against accuracy](depth_vs_accuracy.png)", "", "## Decision", ""]
    headline, _ = decision_section(summary)
    lines += headline + [""]
    lines += write_pictures(out, summary, log)
    lines += backbone_section(out, summary)
    lines += similarity_section(out, summary)
    lines += ["## Peak on validation, per curve", "",
              "For reference: each curve's own best layer on validation. The recommendation above decides.", "",
              md_row("backbone", "weights", "pool", "size", "head", "shots", "chosen on val", "val ± se", "its test",
                     "last layer val", "last layer test"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in best:
        lines.append(md_row(b["backbone"], b["weights"], b["pool"], b["image_size"], b["head"], b["shots"] or "all",
                            b["val_choice"] or "none (no validation rows)",
                            f"{b['val_choice_val']:.3f} ± {b['val_choice_se']:.3f}", f"{b['val_choice_test']:.3f}",
                            f"{b['last_val']:.3f}", f"{b['last_test']:.3f}"))
    lines += ["", "## All results", ""] + results_table(rows, summary.get("decision"))
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
