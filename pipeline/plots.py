"""The sweep report's pictures, drawn from ``results.csv`` rows (matplotlib, Agg backend).

- :func:`depth_curve` (``depth_vs_accuracy.png``, the interface contract's plot): test accuracy
  (solid, with the spread over repeats) and validation accuracy (dashed) against layer depth, one
  line per head and configuration, on the full training data only, with the chance level
  (1 / number of classes) drawn and the legend outside the axes; the multi-layer head is a horizontal
  band (test accuracy, and validation accuracy ± se).
- :func:`learning_curve` (``learning_curve.png``, low-shot sweeps): test accuracy against shots
  per class, one line per layer group (generic, middle, specialised thirds of relative depth).
- :func:`finetune_bars` (``finetune.png``, when fine-tuning rows were appended): each fine-tuning
  mode's test accuracy beside the best probe (chosen on validation accuracy).
- :func:`confusion` (``confusion.png``): the chosen head's test confusion matrix beside its per-class
  accuracy (recall), each bar with its value and binomial standard error.
- :func:`similarity_heatmap` (``layer_similarity.png``): linear CKA between every pair of layers of
  one cache file, layers in depth order (``results.json``'s ``layer_similarity``).
- :func:`backbone_curves` (``backbones.png``, two or more backbone candidates): each candidate's depth curve
  on relative depth, validation accuracy ± se as measured for the comparison, its chosen layer marked
  (``results.json``'s ``backbone_choice``).

Integrity rule: every picture is rendered in memory and written whole and atomically
(:func:`transferlab.util.atomic_write`); a crash leaves the previous picture, which the next run or
``finetune --append-to`` replaces. A picture with nothing to show is not written (and a stale one
of that name is removed), so a report never shows a picture of other rows. Strings from data are drawn
as they are: a ``$`` in a class or layer name never starts matplotlib's mathtext.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from transferlab.util import UserInputError, atomic_write

from .curves import curve_label, curves, finetune_budget, is_finetune, is_multilayer, number
from .decision import stderr
from .html import md_code, md_text

GROUPS = (("generic", 0.0, 1 / 3), ("middle", 1 / 3, 2 / 3), ("specialised", 2 / 3, 1.01))
# the report's pictures, all written into its folder: the only files report.html embeds
PICTURES = ("depth_vs_accuracy.png", "confusion.png", "learning_curve.png", "finetune.png", "layer_similarity.png",
            "backbones.png")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


def _shown(text) -> str:
    """A data string as matplotlib text: shown as it is (a ``$`` never starts mathtext, which could fail to parse)."""
    return str(text).replace("$", r"\$")


def _chance(ax, n_classes: int | None) -> None:
    if n_classes and n_classes > 1:
        ax.axhline(1 / n_classes, color="grey", linestyle=":", linewidth=1.2, label=f"chance (1/{n_classes})")


def depth_curve(rows: list[dict], path: Path, n_classes: int | None = None, chosen: dict | None = None) -> Path | None:
    """``depth_vs_accuracy.png`` from the probe rows on full training data (see the module docstring).

    ``chosen`` (``{"row", "strategy"}``): the recommended row, marked with a star on its curve.
    """
    probes = [r for r in rows if not is_finetune(r.get("head"))]
    rows = [r for r in probes if not r.get("shots")]
    title = "Layer depth against accuracy"
    if not rows and probes:  # a low-shot-only sweep: the depth curve of its largest shot count
        most = max(int(number(r["shots"], 0)) for r in probes)
        rows = [r for r in probes if int(number(r["shots"], 0)) == most]
        title += f" ({most} examples per class)"
    cs = curves(rows)
    if not cs:
        return None
    plt = _pyplot()
    keys = sorted(cs)
    layered = [k for k in keys if not is_multilayer(k[4])] or keys
    rel = len({k[0] for k in keys}) > 1 or len({len(cs[k]) for k in layered}) > 1
    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=110)
    for i, key in enumerate(keys):
        pts = cs[key]
        x = [p["rel_depth"] if rel else p["depth"] for p in pts]
        color = f"C{i % 10}"
        if is_multilayer(key[4]):  # one head over the chosen layers: a horizontal band across the depths
            p = pts[0]
            se = stderr(p["val"], p["n_val"])
            ax.axhline(p["test"], color=color, linewidth=1.5,
                       label=_shown(f"{curve_label(key, keys)}: {p['layer']} (test)"))
            ax.axhspan(p["val"] - se, p["val"] + se, color=color, alpha=0.12, linewidth=0)
            continue
        ax.errorbar(x, [p["test"] for p in pts], yerr=[p["test_std"] for p in pts], marker="o", color=color,
                    capsize=3, label=f"{_shown(curve_label(key, keys))} (test)")
        val = np.array([p["val"] for p in pts], dtype=float)
        se = np.array([stderr(p["val"], p["n_val"]) for p in pts], dtype=float)
        ax.plot(x, val, linestyle="--", color=color, alpha=0.5, linewidth=1)
        ax.fill_between(x, val - se, val + se, color=color, alpha=0.12, linewidth=0)
    if chosen is not None:
        r = chosen["row"]
        key = (r["backbone"], r["weights"], r.get("pool", ""), str(r.get("image_size", "")), r["head"],
               str(r.get("shots", "")))
        point = next((p for p in cs.get(key, []) if p["layer"] == r["layer"]), None)
        if point is not None:
            x0 = point["rel_depth"] if rel else point["depth"]
            label = f"recommended: {chosen.get('strategy') or 'best on validation'}, {r['layer']} + {r['head']}"
            ax.plot([x0], [point["val"]], marker="*", markersize=15, color="black", linestyle="none",
                    label=_shown(label), zorder=5)
    _chance(ax, n_classes)
    if not rel:
        pts = cs[layered[0]]
        ax.set_xticks([p["depth"] for p in pts], [_shown(p["layer"]) for p in pts], rotation=35, ha="right")
        ax.set_xlabel("layer, generic (left) to specialised (right)")
    else:
        ax.set_xlabel("relative depth (0 = stem, 1 = last layer)")
    ax.set_ylabel("accuracy (solid: test, dashed: validation ± se)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title)
    return _save(fig, path)


def group_of(rel_depth: float) -> str:
    for name, lo, hi in GROUPS:
        if lo <= rel_depth < hi:
            return name
    return GROUPS[-1][0]


def learning_points(rows: list[dict]) -> dict:
    """(head, group) -> sorted [(shots, mean test accuracy, std, n rows)] over the low-shot probe rows."""
    acc = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if not is_finetune(r.get("head")) and r.get("shots") not in ("", None, 0, "0"):
            group = group_of(number(r.get("rel_depth"), 0.0))
            acc[(r["head"], group)][int(number(r["shots"]))].append(number(r["test_accuracy"]))
    return {k: sorted((s, float(np.mean(v)), float(np.std(v)), len(v)) for s, v in by.items())
            for k, by in acc.items()}


def learning_curve(rows: list[dict], path: Path, n_classes: int | None = None) -> Path | None:
    """``learning_curve.png``: test accuracy against shots per class, one line per (head, layer group)."""
    pts = learning_points(rows)
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.4), dpi=110)
    order = {g[0]: i for i, g in enumerate(GROUPS)}
    heads = sorted({h for h, _ in pts})
    styles = ["-", "--", "-.", ":"]
    for head, group in sorted(pts, key=lambda k: (k[0], order[k[1]])):
        p = pts[(head, group)]
        label = group if len(heads) == 1 else f"{_shown(head)} · {group}"
        ax.errorbar([s for s, *_ in p], [m for _, m, _, _ in p], yerr=[sd for _, _, sd, _ in p], marker="o",
                    capsize=3, color=f"C{order[group]}", linestyle=styles[heads.index(head) % 4], label=label)
    _chance(ax, n_classes)
    ax.set_xscale("log")
    shots = sorted({s for p in pts.values() for s, *_ in p})
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.minorticks_off()
    ax.set_xlabel("training examples per class (shots)")
    ax.set_ylabel("test accuracy (mean over the group's layers)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, title="layer group")
    ax.set_title("Low-shot learning curve")
    return _save(fig, path)


def finetune_bars(rows: list[dict], path: Path, best_probe: dict | None, n_test: int | None = None) -> Path | None:
    """``finetune.png``: fine-tuning modes' test accuracy beside the best probe (chosen on validation).

    With ``n_test`` (the test split's size) each bar carries its binomial standard error,
    ``sqrt(p (1 - p) / n_test)``, so a difference can be read against its noise."""
    ft = [r for r in rows if is_finetune(r.get("head"))]
    if not ft:
        return None
    plt = _pyplot()
    bars = []
    if best_probe is not None:
        label = _shown(f"probe: {best_probe['head']}\n@ {best_probe['layer']}\n{best_probe.get('image_size', '')} px")
        bars.append((label, number(best_probe["test_accuracy"]), "C0"))
    for r in sorted(ft, key=lambda r: r["head"]):
        budget = finetune_budget(r).replace(", ", "\n", 1)  # the mode, then what it cost (epochs, image size)
        bars.append((_shown(f"{budget}\n({r['weights']})"), number(r["test_accuracy"]), "C1"))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(bars) + 1.5), 4), dpi=110)
    xs = np.arange(len(bars))
    se = [np.sqrt(max(b[1] * (1 - b[1]), 0.0) / n_test) for b in bars] if n_test else None
    ax.bar(xs, [b[1] for b in bars], color=[b[2] for b in bars], yerr=se, capsize=4 if se else 0)
    for i, (x, (_, v, _)) in enumerate(zip(xs, bars)):
        ax.text(x, v + (se[i] if se else 0) + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, [b[0] for b in bars], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Fine-tuning modes beside the recommended probe (blue)" +
                 (f"\nwhiskers: ±1 standard error on {n_test} test images" if n_test else ""), fontsize=10)
    return _save(fig, path)


def confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str) -> Path:
    """``confusion.png``: the confusion matrix (rows: true class) and the per-class accuracy (recall)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    k = len(class_names)
    side = min(9.0, 2.5 + 0.45 * k)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(side + 3.5, side), dpi=110,
                                 gridspec_kw={"width_ratios": [side, 3]})
    class_names = [_shown(c) for c in class_names]
    ConfusionMatrixDisplay(cm, display_labels=class_names).plot(ax=ax, cmap="Blues", colorbar=False,
                                                                include_values=k <= 20, xticks_rotation=45)
    recall = per_class_accuracy(cm)
    support = np.asarray(cm).sum(axis=1)
    se = np.array([stderr(a, int(n)) for a, n in zip(recall, support)], dtype=float)
    ys = np.arange(k)
    bars = bx.barh(ys, np.nan_to_num(recall), color="C0", xerr=np.nan_to_num(se), capsize=2,
                   error_kw={"elinewidth": 0.8})
    if k <= 30:  # each bar's value; more classes than this would overlap
        bx.bar_label(bars, labels=["n/a" if np.isnan(a) else f"{a:.2f}" for a in recall], padding=3, fontsize=8)
    bx.set_yticks(ys, class_names, fontsize=9 if k <= 20 else 7)
    bx.set_ylim(k - 0.5, -0.5)
    bx.set_xlim(0, 1.2)
    bx.set_xticks([0, 0.5, 1])
    bx.set_xlabel("per-class accuracy ± se")
    bx.grid(alpha=0.3, axis="x")
    fig.suptitle(_shown(title), fontsize=10)
    return _save(fig, path)


def similarity_heatmap(entry: dict, path: Path) -> Path | None:
    """``layer_similarity.png``: one cache file's linear CKA matrix (an entry of ``layer_similarity``); None
    (nothing written) when the entry has no matrix."""
    if not entry.get("matrix"):
        return None
    plt = _pyplot()
    M = np.array([[np.nan if v is None else float(v) for v in row] for row in entry["matrix"]])
    names = [_shown(n) for n in entry["layers"]]
    side = min(10.0, 2.5 + 0.5 * len(names))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110)
    im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    if len(names) <= 16:
        for i, j in np.ndindex(M.shape):
            if np.isfinite(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if M[i, j] > 0.6 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="linear CKA")
    ax.set_title(_shown(f"layer similarity (linear CKA, {entry['n_rows']} {entry['split']} rows): "
                        f"{Path(entry['cache_file']).name}"), fontsize=9)
    return _save(fig, path)


def backbone_curves(choice: dict | None, path: Path) -> Path | None:
    """``backbones.png``: every candidate of ``choice`` (``results.json``'s ``backbone_choice``) as its validation
    depth curve on relative depth with standard-error bars, its chosen layer a star (the pick's filled); with
    fewer than two candidates nothing is drawn and a stale picture is removed."""
    cands = (choice or {}).get("candidates") or []
    if len(cands) < 2:
        _drop(Path(path))
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.6), dpi=110)
    for i, c in enumerate(cands):
        color, pts = f"C{i % 10}", c["points"]
        x = [p["rel_depth"] for p in pts]
        ax.errorbar(x, [p["val_accuracy"] for p in pts], yerr=[stderr(p["val_accuracy"], p["n_val"]) for p in pts],
                    marker="o", markersize=4, capsize=3, color=color,
                    label=_shown(f"{c['name']}: {c['layer']} {c['val']:.3f}" + (" (pick)" if c["name"] ==
                                                                                   choice["pick"] else "")))
        ax.plot([c["rel_depth"]], [c["val"]], marker="*", markersize=15, linestyle="none", zorder=5, color=color,
                markeredgecolor="black", markerfacecolor=color if c["name"] == choice["pick"] else "white")
    ax.set_xlabel("relative depth (0 = stem, 1 = last layer)")
    ax.set_ylabel(_shown(f"validation accuracy ± se ({cands[0]['method']})"))
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title="candidate: chosen layer (star)")
    ax.set_title("Which backbone: depth curves of the candidates")
    return _save(fig, Path(path))


def similarity_section(out: Path, summary: dict) -> list[str]:
    """Draw ``layer_similarity.png`` for the decision's cache file (else the first with a matrix) and return
    its Markdown section; a sweep without a matrix gets no section and no stale picture."""
    entries = [e for e in summary.get("layer_similarity") or [] if isinstance(e, dict)]
    chosen = ((summary.get("decision") or {}).get("curve") or {}).get("cache_file")
    entries = sorted(entries, key=lambda e: e.get("cache_file") != chosen)
    entry = next((e for e in entries if e.get("matrix")), None)
    if entry is None or similarity_heatmap(entry, Path(out) / "layer_similarity.png") is None:
        _drop(Path(out) / "layer_similarity.png")
        failed = [e for e in entries if e.get("error")]
        return ["## Layer similarity", "", f"Not measured: {md_text(failed[0]['error'])}", ""] if failed else []
    M = np.array([[np.nan if v is None else float(v) for v in row] for row in entry["matrix"]])
    names = entry["layers"]
    adjacent = [(M[i, i + 1], names[i], names[i + 1]) for i in range(len(names) - 1) if np.isfinite(M[i, i + 1])]
    lines = ["## Layer similarity", "",
             "Linear CKA (Kornblith et al. 2019) between every pair of layers of "
             f"{md_code(Path(entry['cache_file']).name)}, on {entry['n_rows']} {md_text(entry['split'])} rows: 1 where "
             "two layers hold the same representation up to a rotation and a scale, near 0 where they share "
             "little; the matrix is in `results.json`.", "",
             "![layer similarity](layer_similarity.png)", ""]
    if adjacent:
        cka, a, b = max(adjacent)
        low, c, d = min(adjacent)
        lines += [f"Most alike neighbours: {md_code(a)} and {md_code(b)} ({cka:.2f}); the largest change: "
                  f"{md_code(c)} to {md_code(d)} ({low:.2f}).", ""]
    return lines


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Row-normalised diagonal: the share of each true class predicted right (NaN for an absent class)."""
    cm = np.asarray(cm, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(axis=1)


def _drop(path: Path) -> None:
    if path.is_file():
        path.unlink()


def write_pictures(out: Path, summary: dict, log=None) -> list[str]:
    """Draw the report's pictures beside ``depth_vs_accuracy.png``; return their Markdown section.

    ``log`` receives a line before the chosen head is fitted (the one step here that may take a while)."""
    from .chosen import chosen_row, fit_chosen
    from .mistakes import mistakes_lines

    out = Path(out)
    rows = summary["rows"]
    n_classes = len(summary.get("class_names") or []) or None
    lines = []
    row = chosen_row(rows, summary.get("decision"))
    ev = None
    if row is not None:
        try:
            ev = fit_chosen(out, row, preprocessing=(summary.get("config") or {}).get("preprocessing"), log=log)
        except (UserInputError, OSError) as exc:  # its cache file removed or damaged since the sweep
            lines += ["## The chosen layer and head", "",
                      f"{md_code(row['layer'])} with the {md_text(row['head'])} head is the recommended choice, "
                      f"but its confusion matrix could not be computed: {md_text(exc)}", ""]
    if ev is not None:
        title = (f"{row['backbone']}/{row['weights']} {row['layer']} + {row['head']}: test accuracy "
                 f"{ev['test_accuracy']:.3f}")
        confusion(ev["confusion"], ev["class_names"], out / "confusion.png", title)
        predict = f"transferlab predict --model {ev['dir']} IMAGE..."
        lines += ["## The chosen layer and head", "",
                  f"The recommended layer and head (validation accuracy {row['mean_val_accuracy']:.3f}): "
                  f"{md_code(row['layer'])} of "
                  f"{md_text(row['backbone'] + '/' + row['weights'])} with the {md_text(row['head'])} head; its test "
                  f"accuracy is {ev['test_accuracy']:.3f}. The head is saved in {md_code(ev['dir'].name + '/')} "
                  f"({md_code(predict)}).", "",
                  "![confusion matrix and per-class accuracy](confusion.png)", ""]
        lines += mistakes_lines(ev, summary.get("config") or {})
    else:
        _drop(out / "confusion.png")
    if learning_curve(rows, out / "learning_curve.png", n_classes):
        lines += ["## Low-shot learning curve", "",
                  "Test accuracy against training examples per class; each line is the mean over a third of "
                  "the layers (generic, middle, specialised by relative depth).", "",
                  "![low-shot learning curve](learning_curve.png)", ""]
    else:
        _drop(out / "learning_curve.png")
    if finetune_bars(rows, out / "finetune.png", row, int(ev["confusion"].sum()) if ev is not None else None):
        lines += ["## Fine-tuning beside the best probe", "",
                  "![fine-tuning modes beside the best probe](finetune.png)", ""]
    else:
        _drop(out / "finetune.png")
    return lines
