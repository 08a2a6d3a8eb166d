"""The multi-layer head against the best single layer chosen on validation, paired on the same test rows.

    python bench/multilayer.py [CASE ...] [--seeds 0,1,2] [--rise CASE,...] [--out FILE.json]

A case is ``NAME[@PX][/SHOTS]``: a data set of ``bench/advice.py``'s ``data_spec`` (``digits``,
``mnist_small``, ``cifar10_small``, the 100-per-class subsets ``mnist_100`` and ``cifar10_100``, ...),
the image size (default 64 px) and, for low shots, the examples per class drawn from the training split
(``sample_shots``, seeded by the run's seed; the training rows not drawn are the validation rows, as in
the sweep). Features: lite0, ImageNet weights, GAP, the 9 default layers, in ``$TRANSFERLAB_BENCH_DIR/cache``
(extracted when absent; a file of ``bench/advice.py``'s cache copied there under its own name is a hit).

Per case and seed (the seed of the validation holdout or of the shot draw, the same rows for every head):
the logreg head on every layer and the layer with the best validation accuracy (the first in depth order
on a tie); the multi-layer head (``train_multilayer``, its default noise-aware stop); for the cases named
in ``--rise`` also the multi-layer head with the earlier stop (``stop="rise"``: any rise of validation
accuracy adds a layer). All are scored once on the same test rows: the paired difference (multi minus
single, in points) and its standard error over test rows (``std(d) / sqrt(n)``, ``d`` in {-1, 0, 1} per
row); a case's mean row averages the seeds, its error combines the seeds' paired errors.

Integrity rule of ``bench/multilayer.json`` (or ``--out``): rewritten whole (``atomic_write``) after every
case, a case's entry replaced and the others kept, so a kill loses at most the case being measured. A case whose data
set is absent is recorded as skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.advice import data_spec  # noqa: E402
from bench.common import WORK, load_average, machine  # noqa: E402
from transferlab.classifiers import load_head, train_head, train_multilayer  # noqa: E402
from transferlab.features import extract  # noqa: E402
from transferlab.features.cache import list_layers, load_split, read_cache_meta  # noqa: E402
from transferlab.util import atomic_write  # noqa: E402

OUT = Path(__file__).resolve().parent / "multilayer.json"
DEFAULT_CASES = ["digits", "mnist_small", "cifar10_small", "mnist_100", "cifar10_100", "mnist_small/10",
                 "mnist_small/50", "cifar10_small/10", "cifar10_small/50", "digits@128", "mnist_small@128",
                 "cifar10_small@128"]
CASE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+?)(@(?P<px>\d+))?(/(?P<shots>\d+))?$")


def parse_case(case: str) -> tuple[str, int, int | None]:
    """``(data name, image size, shots or None)`` of ``NAME[@PX][/SHOTS]``."""
    m = CASE.match(case)
    if m is None:
        raise SystemExit(f"error: case {case!r} is not NAME[@PX][/SHOTS], e.g. cifar10_small@128 or mnist_small/10")
    return m["name"], int(m["px"] or 64), int(m["shots"]) if m["shots"] else None


def record_name(case: str) -> str:
    name, px, shots = parse_case(case)
    return name + ("" if px == 64 else f"_{px}px") + ("" if shots is None else f"_{shots}shot")


def test_correct(model_dir, path, layers) -> np.ndarray:
    """Per test row: 1 where the saved head is right."""
    head, _ = load_head(model_dir)
    parts = [load_split(path, "test", layer) for layer in layers]
    X, y = np.concatenate([p[0] for p in parts], 1), parts[0][1]
    return (head.predict(X) == y).astype(np.int8)


def paired(a, b) -> tuple[float, float]:
    """Mean of ``b - a`` per row, in points, and its standard error."""
    d = b.astype(float) - a
    return 100 * float(d.mean()), 100 * float(d.std(ddof=1) / np.sqrt(d.size))


def multi_record(path, layers, seed, shots, out, a, **params) -> dict:
    t = time.perf_counter()
    row = train_multilayer(path, layers, out=out, seed=seed, shots=shots, head_params=params or None)
    seconds = time.perf_counter() - t
    b = test_correct(out, path, row["layers"])
    diff, se = paired(a, b)
    return {"layers": row["layers"], "C": row["params"]["C"], "val": row["val_accuracy"], "test": float(b.mean()),
            "diff_points": diff, "paired_se_points": se, "seconds": seconds,
            "path": [s["params"]["layers"] for s in row["val_scores"]],
            "path_val": [s["val_accuracy"] for s in row["val_scores"]]}, b


def one_seed(path, layers, seed: int, shots, tmp: Path, rise: bool) -> dict:
    t = time.perf_counter()
    rows = [train_head(path, layer, "logreg", out=tmp / f"s{seed}" / layer, seed=seed, shots=shots)
            for layer in layers]
    single_seconds = time.perf_counter() - t
    best = max(rows, key=lambda r: r["val_accuracy"])  # max keeps the first best: depth order
    a = test_correct(tmp / f"s{seed}" / best["layer"], path, [best["layer"]])
    rec = {"seed": seed, "single_layer": best["layer"], "single_val": best["val_accuracy"],
           "single_test": float(a.mean()), "n_train": best["n_train"], "n_val": best["n_val"], "n_test": int(a.size),
           "single_seconds_all_layers": single_seconds}
    rec["multi"], b = multi_record(path, layers, seed, shots, tmp / f"m{seed}", a)
    if rise:
        rec["rise"], c = multi_record(path, layers, seed, shots, tmp / f"r{seed}", a, stop="rise")
        rec["rise"]["minus_multi_points"], rec["rise"]["minus_multi_se_points"] = paired(b, c)
    return rec


def mean_row(seeds: list[dict], key: str) -> tuple[float, float, float]:
    """Mean over seeds of ``key``'s difference, its combined paired SE, and the seeds' spread."""
    d = np.array([s[key]["diff_points"] for s in seeds])
    se = float(np.sqrt(np.mean([s[key]["paired_se_points"] ** 2 for s in seeds]) / len(d)))
    return float(d.mean()), se, float(d.std())


def table(results: list[dict]) -> str:
    lines = ["| case | seed | train / val / test rows | best single layer, logreg (val / test) | "
             "multi-layer head: layers (val / test) | multi - single, points ± paired SE | "
             "earlier stop ('rise'): layers (val / test) | rise - single |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['case']} | | skipped: {r['skipped']} | | | | | |")
            continue
        for s in r["seeds"]:
            m, rise = s["multi"], s.get("rise")
            lines.append(f"| {r['case']} | {s['seed']} | {s['n_train']} / {s['n_val']} / {s['n_test']} | "
                         f"{s['single_layer']} ({s['single_val']:.3f} / {s['single_test']:.3f}) | "
                         f"{'+'.join(m['layers'])} ({m['val']:.3f} / {m['test']:.3f}) | "
                         f"{m['diff_points']:+.1f} ± {m['paired_se_points']:.1f} | "
                         + (f"{'+'.join(rise['layers'])} ({rise['val']:.3f} / {rise['test']:.3f}) | "
                            f"{rise['diff_points']:+.1f} ± {rise['paired_se_points']:.1f} |" if rise else "| |"))
        d, se, spread = mean_row(r["seeds"], "multi")
        rise_mean = ""
        if all("rise" in s for s in r["seeds"]):
            dr, ser, spr = mean_row(r["seeds"], "rise")
            rise_mean = f"{dr:+.1f} ± {ser:.1f} (spread {spr:.1f})"
        lines.append(f"| {r['case']} | mean | | | | **{d:+.1f} ± {se:.1f}** (spread {spread:.1f}) | | {rise_mean} |")
    return "\n".join(lines)


def save(out: dict, path: Path = OUT) -> None:
    """``out`` merged into the record at ``path`` (the cases measured now replace theirs) and written whole."""
    if path.is_file():
        ran = {r["case"] for r in out["results"]}
        kept = [r for r in json.loads(path.read_text()).get("results", []) if r.get("case") not in ran and "case" in r]
        out = {**out, "results": kept + out["results"]}
    atomic_write(path, json.dumps(out, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", default=DEFAULT_CASES)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rise", default="digits,mnist_small,cifar10_small",
                    help="cases also measured with the earlier stop (any validation rise adds a layer)")
    ap.add_argument("--out", type=Path, default=OUT, help="the record to merge into (default bench/multilayer.json)")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    rise_cases = {c for c in a.rise.split(",") if c}
    out = {"machine": machine(), "backbone": "lite0", "pool": "gap", "results": []}
    for case in a.cases:
        name, px, shots = parse_case(case)
        spec = data_spec(name)
        if spec is None:
            out["results"].append({"case": record_name(case), "skipped": f"data set {name} not found"})
            save(out, a.out)
            continue
        t = time.perf_counter()
        path = extract(spec, "lite0", layers="all", pool="gap", image_size=px, progress=False,
                       cache_dir=WORK / "cache", log=lambda m: None)
        extract_seconds = time.perf_counter() - t
        catalog = read_cache_meta(path)["catalog"]
        layers = [n for n in list_layers(path) if n in catalog]  # the default layers (not the logits)
        with tempfile.TemporaryDirectory() as tmp:
            res = [one_seed(path, layers, s, shots, Path(tmp), case in rise_cases) for s in seeds]
        out["results"].append({"case": record_name(case), "data": name, "image_size": px, "shots": shots,
                               "layers": layers, "extract_seconds": extract_seconds, "seeds": res,
                               "load_average_after": load_average()})
        save(out, a.out)
        print(table(out["results"][-1:]), flush=True)
    print(table(json.loads(a.out.read_text())["results"]))


if __name__ == "__main__":
    main()
