"""Calibrate ``transferlab advise``: the advised regime at three seeds beside the measured best regime, per case.

    python bench/advice.py digits mnist_small@128 cifar10_perm@32 --regimes     # measure every regime
    python bench/advice.py digits mnist_small@128 --advice --seeds 0,1,2        # run advise per seed
    python bench/advice.py --render                                             # rewrite bench/advice.md only

A case is ``NAME[@PX]`` (``PX`` the input size, 64 unless given): ``digits`` (scikit-learn's),
``mnist_small``, ``cifar10_small``, ``cifar10_full`` (``../shared/data``), ``cifar10_up96`` (CIFAR-10 small with
every image enlarged to 96 px, bicubic: a stand-in for a folder of 96 px photos, which ``../shared/data`` lacks;
``@auto`` runs it at the size ``--image-size auto`` picks, as a user's command would), ``mnist_100`` and
``cifar10_100`` (100 training images per class drawn with seed 0 from the small sets; their test
splits whole), ``cifar10_perm`` (all of CIFAR-10 with one fixed random permutation of pixel
positions, seed 0, the same for every image: locality, the prior every ImageNet filter encodes, is
gone, while colour statistics survive). Derived sets are written to a scratch folder outside the
project.

``--regimes`` measures every regime on the whole case with the stated budget:

- linear-probe: logistic regression on the last layer, C chosen on validation;
- generic-features: logistic regression on the layer chosen on validation (any layer);
- fine-tune: ``finetune --mode last:2`` from ImageNet weights, ``--epochs`` epochs;
- from-scratch: ``finetune --mode scratch``, the same epochs, size and batch.

Fine-tuning validates on the probes' rows (``val_fraction`` 0.2, the same seed: the heads' holdout),
so the four validation accuracies are scored on the same rows. The *measured best* regime is the
one with the best validation accuracy; test accuracy is beside it, never used to choose.
``--advice`` runs ``advise`` at each seed with the case's input size and defaults otherwise.

Integrity: each case's record is ``bench/advice/<case>.json``, rewritten whole and atomically
(``transferlab.util.write_json``) after each phase: a killed run leaves the previous record; a
regime measured with other epochs is measured again, never mixed. ``bench/advice.md`` is rendered
from the records present, whole, atomically.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECORDS = ROOT / "bench" / "advice"
SCRATCH = Path(tempfile.gettempdir()) / "transferlab-bench"
REGIMES = ("linear-probe", "generic-features", "fine-tune", "from-scratch")
SHORT = {"linear-probe": "LP", "generic-features": "GF", "fine-tune": "FT", "from-scratch": "FS", None: "none"}
VAL_FRACTION = 0.2  # the sweep's default: fine-tuning validates on the probes' rows


def parse_case(case: str) -> "tuple[str, int | str]":
    name, _, px = case.partition("@")
    return name, ("auto" if px == "auto" else int(px)) if px else 64


def record_name(case: str) -> str:
    name, px = parse_case(case)
    return name if px == 64 else f"{name}_{px}" if px == "auto" else f"{name}_{px}px"


def _cifar_full_arrays() -> Path | None:
    target = SCRATCH / "cifar10_full.npz"
    if not target.exists():
        src = SHARED / "materialize.py"
        if not src.exists():
            return None
        SCRATCH.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(src), "npz", str(target)], check=True)
    return target


def _write_npz(target: Path, arrays: dict) -> None:
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(target)


def _per_class_subset(source: Path, target: Path, per_class: int) -> None:
    with np.load(source) as z:
        d = {k: z[k] for k in z.files}
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(d["y_train"] == c))[:per_class]
                                   for c in np.unique(d["y_train"])]))
    d["x_train"], d["y_train"] = d["x_train"][keep], d["y_train"][keep]
    _write_npz(target, d)


def _upsampled(source: Path, target: Path, side: int) -> None:
    from PIL import Image

    with np.load(source) as z:
        d = {k: z[k] for k in z.files}
    for split in ("x_train", "x_test"):
        d[split] = np.stack([np.asarray(Image.fromarray(x).resize((side, side), Image.BICUBIC)) for x in d[split]])
    _write_npz(target, d)


def _permuted(source: Path, target: Path) -> None:
    with np.load(source) as z:
        d = {k: z[k] for k in z.files}
    h, w = d["x_train"].shape[1:3]
    perm = np.random.default_rng(0).permutation(h * w)
    for split in ("x_train", "x_test"):
        x = d[split]
        d[split] = x.reshape(len(x), h * w, -1)[:, perm].reshape(x.shape)
    _write_npz(target, d)


def _derived(source: Path, name: str, build) -> str | None:
    """The data spec of ``SCRATCH/<name>.npz``, built from ``source`` by ``build(source, target)`` when absent
    (written whole by :func:`_write_npz`); None when ``source`` is absent."""
    if not source.exists():
        return None
    target = SCRATCH / f"{name}.npz"
    if not target.exists():
        SCRATCH.mkdir(parents=True, exist_ok=True)
        build(source, target)
    return f"npz:{target}"


def data_spec(name: str) -> str | None:
    """The data spec of a case's data set, building derived sets in the scratch folder; None when absent."""
    if name == "digits":
        return "digits"
    if name == "cifar10_full":
        target = _cifar_full_arrays()
        return None if target is None else f"npz:{target}"
    if name in ("mnist_100", "cifar10_100"):
        return _derived(SHARED / f"{name.split('_')[0]}_small.npz", name, lambda s, t: _per_class_subset(s, t, 100))
    if name == "cifar10_up96":
        return _derived(SHARED / "cifar10_small.npz", name, lambda s, t: _upsampled(s, t, 96))
    if name == "cifar10_perm":
        target = SCRATCH / "cifar10_perm.npz"
        if not target.exists():
            full = _cifar_full_arrays()
            if full is None:
                return None
            _permuted(full, target)
        return f"npz:{target}"
    path = SHARED / f"{name}.npz"
    return f"npz:{path}" if path.exists() else None


def measure_regimes(case: str, epochs: int, cache_dir: Path, rec: dict, layers: str = "all") -> dict:
    """Every regime of ``case`` measured with ``epochs`` (kept when already measured with the same epochs)."""
    from transferlab.finetuning import finetune
    from transferlab.pipeline.sweep import SweepConfig, sweep

    name, px = parse_case(case)
    spec = data_spec(name)
    if spec is None:
        return {"name": record_name(case), "skipped": f"{name} is not in {SHARED}"}
    rec = {**rec, "name": record_name(case), "data": spec, "image_size": px}
    regimes = dict(rec.get("regimes") or {}) if rec.get("epochs") == epochs else {}
    if rec.get("regimes") and rec.get("epochs") != epochs:  # kept beside, never mixed into this budget's rows
        rec["earlier"] = {**(rec.get("earlier") or {}), str(rec["epochs"]): {
            "regimes": rec["regimes"], "measured_best": rec.get("measured_best"), "note": rec.get("note")}}
        rec["note"] = None
    rec["epochs"] = epochs
    t0 = time.perf_counter()
    if "generic-features" not in regimes:
        out = SCRATCH / f"sweep_{record_name(case)}"
        summary = sweep(SweepConfig(data=spec, heads="logreg", image_size=str(px), out=str(out), layers=layers,
                                    cache_dir=str(cache_dir)), progress=False, log=lambda m: None)
        rows = [r for r in summary.summary["rows"] if r["weights"] == "imagenet" and not int(r["shots"] or 0)]
        last = max(rows, key=lambda r: int(r["depth"]))
        chosen = max(rows, key=lambda r: (float(r["val_accuracy"]), int(r["depth"])))
        regimes["linear-probe"] = {"layer": last["layer"], "val": float(last["val_accuracy"]),
                                   "test": float(last["test_accuracy"])}
        regimes["generic-features"] = {"layer": chosen["layer"], "val": float(chosen["val_accuracy"]),
                                       "test": float(chosen["test_accuracy"])}
        rec["sizes"] = summary.summary["class_counts"]
        rec["probe_seconds"] = round(time.perf_counter() - t0, 1)  # every layer's extraction and fits
        rec["probe_layers"] = layers
        print(f"[{case}] probes done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for regime, mode in (("fine-tune", "last:2"), ("from-scratch", "scratch")):
        if regimes.get(regime):
            continue
        cpu0 = time.process_time()
        m = finetune(spec, "lite0", mode=mode, epochs=epochs, image_size=px, augment=False, seed=0,
                     val_fraction=VAL_FRACTION,
                     out=str(SCRATCH / f"ft_{record_name(case)}_{mode.replace(':', '')}_{epochs}"), progress=False)
        regimes[regime] = {"mode": mode, "val": m["val_accuracy"], "test": m["test_accuracy"],
                           "seconds": m["fit_seconds"], "val_rows": "probes' (0.2 of train, seed 0)"}
        if px == "auto":
            rec["auto_size"] = m["config"]["image_size"]
        if torch_threads() == 1:  # one thread: its CPU time is what the run costs with a core to itself
            regimes[regime]["cpu_seconds"] = round(time.process_time() - cpu0, 1)
        print(f"[{case}] {regime}: test {m['test_accuracy']:.3f} at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rec["regimes"] = regimes  # recorded per regime: a killed run keeps what it measured
        rec["measured_best"] = None
        yield_record(rec)
    rec["regimes"] = regimes
    rec["measured_best"] = max(regimes, key=lambda k: regimes[k]["val"])
    rec["note"] = rec.get("note") if rec.get("note") and "partial" not in rec.get("note", "") else None
    return rec


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_advice(case: str, seeds: list, cache_dir: Path, rec: dict, budget: float | None = None) -> dict:
    """``advise`` at each seed, the case's input size, defaults otherwise."""
    from transferlab.pipeline.advise import advise

    name, px = parse_case(case)
    spec = data_spec(name)
    if spec is None:
        return {"name": record_name(case), "skipped": f"{name} is not in {SHARED}"}
    rec = {**rec, "name": record_name(case), "data": spec, "image_size": px}
    # advice at a stated budget is kept apart from the advice at advise's default, one entry per budget
    where = ("advice_budgets", f"{budget:g}") if budget is not None else ("advice_seeds", None)
    kept = rec.get(where[0]) or {}
    by_seed = dict((kept.get(where[1]) or {}) if where[1] else kept)
    for seed in seeds:
        adv = advise(spec, image_size=px, seed=seed, cache_dir=cache_dir, log=lambda m: print(m, file=sys.stderr),
                     **({} if budget is None else {"budget": budget}))
        by_seed[str(seed)] = {"strategy": adv.strategy, "runner_up": adv.runner_up, "close": adv.close,
                              "chosen_layer": adv.chosen_layer, "reasons": adv.reasons, "seconds": adv.seconds,
                              "budget_minutes": getattr(adv, "budget_minutes", None),
                              "price_lines": adv.price_lines() if hasattr(adv, "price_lines") else []}
        print(f"[{case}] advise seed {seed}: {adv.strategy} (runner-up {adv.runner_up}"
              f"{', close' if adv.close else ''}) in {adv.seconds:.0f} s", file=sys.stderr)
        rec[where[0]] = {**kept, where[1]: by_seed} if where[1] else by_seed
        yield_record(rec)
    rec.pop("advice", None)  # the single-seed record of the earlier calibration
    return rec


def yield_record(rec: dict) -> None:
    from transferlab.util import write_json

    write_json(RECORDS / f"{rec['name']}.json", rec)


def _advised(r: dict) -> list:
    """``[(seed, advice dict)]`` of a record, old (one seed) or new."""
    if r.get("advice_seeds"):
        return sorted(((int(s), a) for s, a in r["advice_seeds"].items()))
    return [(0, r["advice"])] if r.get("advice") else []


def agreement(r: dict) -> str:
    """The agreement of a record's advice (every seed) with its measured best: :func:`agrees`."""
    return agrees(r.get("measured_best"), [a for _, a in _advised(r)])


def agrees(best: str | None, adv: list) -> str:
    """``yes`` when every seed's advice is ``best``, ``close call`` when the ones that differ are named
    close calls between ``best`` and their own answer, ``NO`` otherwise (``-``: nothing to compare)."""
    if not best or not adv:
        return "-"
    if all(a["strategy"] == best for a in adv):
        return "yes"
    if all(a["strategy"] == best or (a["close"] and a["runner_up"] == best) for a in adv):
        return "close call"
    return "NO"


def confusion(recs: list) -> list:
    """A 4x4 table of (measured best, advised) over every (case, seed) with both, in Markdown."""
    cols = list(REGIMES) + [None]
    counts = {(m, a): 0 for m in REGIMES for a in cols}
    for r in recs:
        if r.get("measured_best") in REGIMES:
            for _, a in _advised(r):
                key = (r["measured_best"], a["strategy"] if a["strategy"] in REGIMES else None)
                counts[key] += 1
    total = sum(counts.values())
    hits = sum(counts[(m, m)] for m in REGIMES)
    lines = ["| measured best \\ advised | " + " | ".join(SHORT[c] for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    lines += [f"| {m} | " + " | ".join(str(counts[(m, c)]) for c in cols) + " |" for m in REGIMES]
    lines += ["", f"Agreement: {hits} of {total} (case, seed) pairs"
                  f"{f' ({hits / total:.0%})' if total else ''}; LP linear-probe, GF generic-features, FT fine-tune, "
                  "FS from-scratch, none: no regime named."]
    return lines


def trained_seconds(v: dict) -> float:
    """A trained regime's measured cost: its CPU time where one thread ran it (what it costs with a core to
    itself, as advise prices on a machine busier than its cores), else its wall time (an upper bound here)."""
    return v.get("cpu_seconds") or v["seconds"]


def best_within(r: dict, minutes: float) -> tuple:
    """``(regime, why)``: the measured best (on validation) among the regimes whose measured time fits
    ``minutes``: the probes always (their sweep over every layer is counted where recorded), fine-tune and
    from-scratch when their measured training took at most the budget; ``why`` names those over it and
    any regime not measured."""
    g = {k: v for k, v in (r.get("regimes") or {}).items() if v}
    cost = {k: trained_seconds(v) if k in ("fine-tune", "from-scratch") else r.get("probe_seconds") or 0
            for k, v in g.items()}
    fits = {k: v for k, v in g.items() if cost[k] <= 60 * minutes}
    if not fits:
        return None, "no regime measured"
    out = [f"{SHORT[k]} {cost[k] / 60:.0f} min" for k in g if k not in fits]
    said = ["over: " + ", ".join(out)] if out else ["all fit"]
    said += [f"{SHORT[k]} not measured" for k in REGIMES if k not in g]
    return max(fits, key=lambda k: fits[k]["val"]), "; ".join(said)


def budget_table(recs: list) -> list:
    """The same case advised at several budgets: advise's answer per seed beside the measured best among the
    regimes that fit each budget."""
    from transferlab.pipeline.price import DEFAULT_BUDGET_MINUTES

    rows = []
    for r in recs:
        budgets = dict(r.get("advice_budgets") or {})
        if budgets and r.get("advice_seeds"):  # beside them, the advice at advise's own (assumed) budget
            assumed = {a.get("budget_minutes") for a in r["advice_seeds"].values()} - {None}
            budgets[f"{assumed.pop() if len(assumed) == 1 else DEFAULT_BUDGET_MINUTES:g} (assumed)"] = r["advice_seeds"]
        for b, by_seed in sorted(budgets.items(), key=lambda kv: float(kv[0].split()[0])):
            best, why = best_within(r, float(b.split()[0]))
            adv = [a for _, a in sorted((int(s), a) for s, a in by_seed.items())]
            said = ", ".join(SHORT.get(a["strategy"], a["strategy"])
                             + (f"~/{SHORT.get(a['runner_up'], a['runner_up'])}" if a["close"] else "") for a in adv)
            rows.append(f"| {r['name']} | {b} | {said} | {best or 'not finished'} ({why}) | {agrees(best, adv)} |")
    if not rows:
        return []
    return ["", "## The answer against the budget (`--budget MINUTES`)", "",
            "advise at a stated budget, against the measured best among the regimes whose measured time here "
            "fits it (the probes always count: the cheapest answer, what a too small budget falls back to; "
            "fine-tune and from-scratch at their measured epochs, priced by their CPU time where one thread ran them, "
            "else by their wall time on the shared machine, an upper bound; advise prices on one thread's CPU time "
            "when the machine is busier than its cores).", "",
            "| case | budget (min) | advised (seeds) | measured best within the budget | agree |",
            "|---|---|---|---|---|"] + rows


def shown_size(r: dict) -> str:
    """A record's input size: ``auto: 96`` where the case ran at the size ``--image-size auto`` picked."""
    return f"auto: {r['auto_size']}" if r.get("auto_size") else str(r["image_size"])


def render() -> Path:
    from transferlab.util import atomic_write

    recs = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    lines = ["# Calibration of `transferlab advise`", "",
             "Written by `python bench/advice.py` (see its docstring). lite0, ImageNet weights unless stated; "
             "probes: logistic regression, C chosen on validation; fine-tune `last:2` and from-scratch with the "
             "same epochs, image size, batch 64, no augmentation. The measured best regime is chosen on "
             "validation accuracy; test accuracy beside it. `advised` lists advise's answer at seeds 0, 1, 2 "
             "(`~` marks a named close call, its runner-up after `/`). Machine: the shared 2-core CPU (busy: "
             "figures of time are upper bounds).", "",
             "| case | px | epochs | advised (seeds) | measured best | linear-probe | generic-features (layer) "
             "| fine-tune | from-scratch | agree |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if "skipped" in r:
            lines.append(f"| {r['name']} | | | skipped: {r['skipped']} | | | | | | |")
            continue
        adv = ", ".join(f"{SHORT.get(a['strategy'], a['strategy'])}"
                        f"{'~/' + SHORT.get(a['runner_up'], str(a['runner_up'])) if a['close'] else ''}"
                        for _, a in _advised(r)) or "not run"
        g = r.get("regimes") or {}
        cell = lambda k: (f"{g[k]['test']:.3f} (val {g[k]['val']:.3f})" if g.get(k)  # noqa: E731
                          else "not measured")
        layer = f" `{g['generic-features']['layer']}`" if g.get("generic-features") else ""
        lines.append(f"| {r['name']} | {shown_size(r)} | {r.get('epochs', '-')} | {adv} | "
                     f"{r.get('measured_best') or 'not finished'} | {cell('linear-probe')} | "
                     f"{cell('generic-features')}{layer} | {cell('fine-tune')} | {cell('from-scratch')} | "
                     f"{agreement(r)} |")
    lines += ["", "## Advised against measured, every (case, seed)", ""] + confusion(recs)
    lines += budget_table(recs)
    notes = [f"- {r['name']}: {r['note']}" for r in recs if r.get("note")]
    for r in recs:  # the same case measured at other epochs, kept beside
        for ep, e in sorted((r.get("earlier") or {}).items(), key=lambda kv: int(kv[0])):
            g = e.get("regimes") or {}
            said = ", ".join(f"{SHORT[k]} {g[k]['val']:.3f}/{g[k]['test']:.3f}" for k in REGIMES if g.get(k))
            notes.append(f"- {r['name']} at {ep} epoch{'s' if ep != '1' else ''} (val/test): {said}; measured best "
                         f"{e.get('measured_best')}" + (f". {e['note']}" if e.get("note") else ""))
    if notes:
        lines += ["", "Notes:", ""] + notes
    lines += ["", "## The advice's evidence, per case (seed 0)", ""]
    for r in recs:
        adv = _advised(r)
        if "skipped" in r or not adv:
            continue
        first = adv[0][1]
        lines += [f"### {r['name']} ({shown_size(r)} px)", ""] + [f"- {x}" for x in first["reasons"]]
        lines += [f"- price: {x}" for x in first.get("price_lines") or []] + [""]
    path = ROOT / "bench" / "advice.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="NAME[@PX]: digits, mnist_small, cifar10_small, cifar10_full, "
                                              "mnist_100, cifar10_100, cifar10_perm")
    ap.add_argument("--regimes", action="store_true", help="measure every regime (kept when measured already)")
    ap.add_argument("--advice", action="store_true", help="run advise at each of --seeds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", type=float, default=None, help="advise's --budget MINUTES (its default otherwise)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--layers", default="all", help="layers the probes sweep (all, or a comma-separated list)")
    ap.add_argument("--render", action="store_true", help="only rewrite bench/advice.md from the records")
    a = ap.parse_args(argv)
    RECORDS.mkdir(parents=True, exist_ok=True)
    cache = SCRATCH / "cache"
    for case in [] if a.render else a.cases:
        target = RECORDS / f"{record_name(case)}.json"
        rec = json.loads(target.read_text()) if target.exists() else {}
        if a.regimes:
            rec = measure_regimes(case, a.epochs, cache, rec, a.layers)
            yield_record(rec)
        if a.advice and "skipped" not in rec:
            rec = run_advice(case, [int(s) for s in a.seeds.split(",")], cache, rec, a.budget)
            yield_record(rec)
        render()
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
