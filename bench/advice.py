"""Calibrate ``transferlab advise``: the advised regime beside the measured best regime, per data set.

    python bench/advice.py digits mnist_small cifar10_small            # the small sets
    python bench/advice.py mnist_full cifar10_full --epochs 1          # the full sets (long on a CPU)
    python bench/advice.py --render                                    # rewrite bench/advice.md only

For each data set it runs ``advise`` (64 px, lite0, defaults) and then measures every regime on
the whole data set with equal budgets:

- linear-probe: logistic regression on the last layer, C chosen on validation;
- generic-features: logistic regression on the layer chosen on validation (any layer);
- fine-tune: ``finetune --mode last:2`` from ImageNet weights, ``--epochs`` epochs;
- from-scratch: ``finetune --mode scratch``, the same epochs, size and batch.

Test accuracy is reported for each regime; the *measured best* regime is the one with the best
validation accuracy (fine-tuning's own validation split: 10% of train), its test accuracy beside it.
Each data set's record goes to ``bench/advice/<name>.json`` (written atomically, whole: a killed run
leaves the previous record); ``bench/advice.md`` is rendered from all records present.
Data sets are read from ``../shared/data`` and skipped with a note when absent; the full CIFAR-10
is materialised from its JPEG archive into a scratch folder outside the project.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECORDS = ROOT / "bench" / "advice"
SCRATCH = Path(tempfile.gettempdir()) / "transferlab-bench"


def data_spec(name: str) -> str | None:
    if name == "digits":
        return "digits"
    if name == "cifar10_full":
        target = SCRATCH / "cifar10_full.npz"
        if not target.exists():
            src = SHARED / "materialize.py"
            if not src.exists():
                return None
            SCRATCH.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, str(src), "npz", str(target)], check=True)
        return f"npz:{target}"
    path = SHARED / f"{name}.npz"
    return f"npz:{path}" if path.exists() else None


def measure(name: str, epochs: int, image_size: int, cache_dir: Path, keep: dict | None = None,
            layers: str = "all") -> dict:
    from transferlab.finetuning import finetune
    from transferlab.pipeline.advise import advise
    from transferlab.pipeline.sweep import SweepConfig, sweep

    spec = data_spec(name)
    if spec is None:
        return {"name": name, "skipped": f"{name} is not in {SHARED}"}
    rec = {"name": name, "data": spec, "image_size": image_size, "epochs": epochs}
    t0 = time.perf_counter()
    adv = advise(spec, image_size=image_size, cache_dir=cache_dir, log=lambda m: print(m, file=sys.stderr))
    rec["advice"] = {"strategy": adv.strategy, "runner_up": adv.runner_up, "close": adv.close,
                     "reasons": adv.reasons, "seconds": adv.seconds, "facts": adv.facts}
    print(f"[{name}] advise: {adv.strategy} (runner-up {adv.runner_up}) in {adv.seconds:.0f} s", file=sys.stderr)
    if keep is not None:  # --advice-only: the regimes as measured before (or not measured)
        if keep.get("regimes") and keep.get("epochs") == epochs:
            return {**keep, "advice": rec["advice"]}
        return {**rec, "regimes": None, "measured_best": None}
    out = SCRATCH / f"sweep_{name}_{image_size}"
    summary = sweep(SweepConfig(data=spec, heads="logreg", image_size=str(image_size), out=str(out), layers=layers,
                                cache_dir=str(cache_dir)), progress=False, log=lambda m: None)
    rec["probe_layers"] = layers
    rows = [r for r in summary["rows"] if r["weights"] == "imagenet" and not r["shots"]]
    last = max(rows, key=lambda r: int(r["depth"]))
    chosen = max(rows, key=lambda r: (float(r["val_accuracy"]), int(r["depth"])))
    regimes = {
        "linear-probe": {"layer": last["layer"], "val": float(last["val_accuracy"]),
                         "test": float(last["test_accuracy"])},
        "generic-features": {"layer": chosen["layer"], "val": float(chosen["val_accuracy"]),
                             "test": float(chosen["test_accuracy"])},
    }
    print(f"[{name}] probes done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for regime, mode in (("fine-tune", "last:2"), ("from-scratch", "scratch")):
        m = finetune(spec, "lite0", mode=mode, epochs=epochs, image_size=image_size, augment=False, seed=0,
                     out=str(SCRATCH / f"ft_{name}_{mode.replace(':', '')}_{image_size}_{epochs}"), progress=False)
        regimes[regime] = {"mode": mode, "val": m["val_accuracy"], "test": m["test_accuracy"],
                           "seconds": m["fit_seconds"]}
        print(f"[{name}] {regime}: test {m['test_accuracy']:.3f} at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    rec["regimes"] = regimes
    rec["measured_best"] = max(regimes, key=lambda k: regimes[k]["val"])
    rec["sizes"] = summary["class_counts"]
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def render() -> Path:
    from transferlab.util import atomic_write

    recs = [json.loads(p.read_text()) for p in sorted(RECORDS.glob("*.json"))]
    lines = ["# Calibration of `transferlab advise`", "",
             "Written by `python bench/advice.py` (see its docstring). lite0, ImageNet weights unless stated; "
             "probes: logistic regression, C chosen on validation; fine-tune `last:2` and from-scratch with the "
             "same epochs, image size, batch 64, no augmentation. The measured best regime is chosen on "
             "validation accuracy; test accuracy beside it. Machine: the shared 2-core CPU (busy: figures of time "
             "are upper bounds).", "",
             "| data | px | epochs | advised (runner-up) | measured best | linear-probe | generic-features (layer) "
             "| fine-tune | from-scratch | agree |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if "skipped" in r:
            lines.append(f"| {r['name']} | | | skipped: {r['skipped']} | | | | | | |")
            continue
        if not r.get("regimes"):
            a = r["advice"]
            lines.append(f"| {r['name']} | {r['image_size']} | - | **{a['strategy']}** ({a['runner_up']}"
                         f"{', close' if a['close'] else ''}) | not measured | | | | | |")
            continue
        g = r["regimes"]
        cell = lambda k: (f"{g[k]['test']:.3f} (val {g[k]['val']:.3f})" if g.get(k)  # noqa: E731
                          else "not finished")
        a = r["advice"]
        lines.append(f"| {r['name']} | {r['image_size']} | {r['epochs']} | **{a['strategy']}** ({a['runner_up']}"
                     f"{', close' if a['close'] else ''}) | {r['measured_best']} | {cell('linear-probe')} | "
                     f"{cell('generic-features')} `{g['generic-features']['layer']}` | {cell('fine-tune')} | "
                     f"{cell('from-scratch')} | {'yes' if a['strategy'] == r['measured_best'] else 'NO'} |")
    notes = [f"- {r['name']}: {r['note']}" for r in recs if r.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + notes
    lines += ["", "## The advice's evidence, per data set", ""]
    for r in recs:
        if "skipped" in r:
            continue
        lines += [f"### {r['name']} ({r['image_size']} px)", ""] + [f"- {x}" for x in r["advice"]["reasons"]] + [""]
    path = ROOT / "bench" / "advice.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="digits, mnist_small, cifar10_small, mnist_full, cifar10_full")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--layers", default="all", help="layers the probes sweep (all, or a comma-separated list)")
    ap.add_argument("--render", action="store_true", help="only rewrite bench/advice.md from the records")
    ap.add_argument("--advice-only", action="store_true",
                    help="rerun advise only; keep the regimes measured before (same epochs)")
    a = ap.parse_args(argv)
    from transferlab.util import write_json

    RECORDS.mkdir(parents=True, exist_ok=True)
    for name in [] if a.render else a.names:
        suffix = "" if a.image_size == 64 else f"_{a.image_size}px"
        target = RECORDS / f"{name}{suffix}.json"
        keep = (json.loads(target.read_text()) if target.exists() else {}) if a.advice_only else None
        rec = measure(name, a.epochs, a.image_size, SCRATCH / "cache", keep, a.layers)
        write_json(target, rec)
        render()
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
