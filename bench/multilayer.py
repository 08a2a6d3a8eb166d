"""The multi-layer head against the best single layer chosen on validation, paired on the same test rows.

    python bench/multilayer.py [DATA ...] [--seeds 0,1,2]     (default: digits mnist_small cifar10_small)

Per data set: lite0 features at 64 px (GAP, every default layer; extracted once into the scratch
folder). Per seed (the seed of the validation holdout, the same rows for both): the logreg head on
every layer, and the layer with the best validation accuracy (the first in depth order on a tie);
the multi-layer head (``train_multilayer``: greedy selection on the same validation rows), and its
first greedy step alone (``max_layers=1``: the one layer its own scaling and C grid pick, which
separates the gain of combining layers from that of the head's scaling). All are scored on the same
test rows: the paired difference (multi minus single, in points) and its standard error over test
rows (``std(d) / sqrt(n)``, ``d`` in {-1, 0, 1} per row). Writes ``bench/multilayer.json`` (a data
set's entry replaced, the others kept) and prints the Markdown table of ``bench/multilayer.md``.
Data sets other than ``digits`` come from ``../shared/data`` and are skipped (with the reason) when
absent.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import SHARED, WORK, load_average, machine  # noqa: E402
from transferlab.classifiers import load_head, train_head, train_multilayer  # noqa: E402
from transferlab.features import extract  # noqa: E402
from transferlab.features.cache import list_layers, load_split  # noqa: E402

OUT = Path(__file__).resolve().parent / "multilayer.json"


def data_spec(name: str) -> str | None:
    if name == "digits":
        return "digits"
    path = SHARED / f"{name}.npz"
    return f"npz:{path}" if path.is_file() else None


def test_correct(model_dir, path, layers) -> np.ndarray:
    """Per test row: 1 where the saved head is right."""
    head, _ = load_head(model_dir)
    parts = [load_split(path, "test", layer) for layer in layers]
    X, y = np.concatenate([p[0] for p in parts], 1), parts[0][1]
    return (head.predict(X) == y).astype(np.int8)


def one_seed(path, seed: int, tmp: Path) -> dict:
    t = time.perf_counter()
    rows = [train_head(path, layer, "logreg", out=tmp / f"s{seed}" / layer, seed=seed) for layer in list_layers(path)]
    single_seconds = time.perf_counter() - t
    best = max(rows, key=lambda r: r["val_accuracy"])  # max keeps the first best: depth order
    t = time.perf_counter()
    multi = train_multilayer(path, out=tmp / f"m{seed}", seed=seed)
    multi_seconds = time.perf_counter() - t
    one = train_multilayer(path, out=tmp / f"o{seed}", seed=seed, max_layers=1)  # its first step alone
    a = test_correct(tmp / f"s{seed}" / best["layer"], path, [best["layer"]])
    b = test_correct(tmp / f"m{seed}", path, multi["layers"])
    c = test_correct(tmp / f"o{seed}", path, one["layers"])
    d = b.astype(float) - a
    return {"seed": seed, "single_layer": best["layer"], "single_val": best["val_accuracy"],
            "single_test": float(a.mean()), "multi_layers": multi["layers"], "multi_C": multi["params"]["C"],
            "multi_val": multi["val_accuracy"], "multi_test": float(b.mean()),
            "diff_points": 100 * float(d.mean()), "paired_se_points": 100 * float(d.std(ddof=1) / np.sqrt(d.size)),
            "one_layer": one["layer"], "one_val": one["val_accuracy"], "one_test": float(c.mean()),
            "combining_points": 100 * float((b.astype(float) - c).mean()),
            "combining_se_points": 100 * float((b.astype(float) - c).std(ddof=1) / np.sqrt(d.size)),
            "n_val": multi["n_val"], "n_test": int(d.size), "single_seconds_all_layers": single_seconds,
            "multi_seconds": multi_seconds, "path": [s["params"]["layers"] for s in multi["val_scores"]],
            "path_val": [s["val_accuracy"] for s in multi["val_scores"]]}


def table(results: list[dict]) -> str:
    lines = ["| data | seed | best single layer, logreg (val / test) | multi-layer head: layers (val / test) | "
             "multi - single, points ± paired SE | its first step alone (val / test) | multi - first step |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['data']} | | skipped: {r['skipped']} | | |")
            continue
        for s in r["seeds"]:
            lines.append(f"| {r['data']} | {s['seed']} | {s['single_layer']} ({s['single_val']:.3f} / "
                         f"{s['single_test']:.3f}) | {'+'.join(s['multi_layers'])} ({s['multi_val']:.3f} / "
                         f"{s['multi_test']:.3f}) | {s['diff_points']:+.1f} ± {s['paired_se_points']:.1f} | "
                         + (f"{s['one_layer']} ({s['one_val']:.3f} / {s['one_test']:.3f}) | "
                            f"{s['combining_points']:+.1f} ± {s['combining_se_points']:.1f} |" if "one_layer" in s
                            else "not run | |"))
        d = np.array([s["diff_points"] for s in r["seeds"]])
        se = np.sqrt(np.mean([s["paired_se_points"] ** 2 for s in r["seeds"]]) / len(d))
        lines.append(f"| {r['data']} | mean | | | {d.mean():+.1f} ± {se:.1f} (seeds' spread {d.std():.1f}) | | |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="*", default=["digits", "mnist_small", "cifar10_small"])
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    out = {"machine": machine(), "image_size": 64, "backbone": "lite0", "results": []}
    for name in a.data:
        spec = data_spec(name)
        if spec is None:
            out["results"].append({"data": name, "skipped": f"{SHARED / (name + '.npz')} not found"})
            continue
        t = time.perf_counter()
        path = extract(spec, "lite0", layers="all", pool="gap", image_size=64, progress=False,
                       cache_dir=WORK / "cache", log=lambda m: None)
        extract_seconds = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            res = [one_seed(path, s, Path(tmp)) for s in seeds]
        out["results"].append({"data": name, "layers": list_layers(path), "extract_seconds": extract_seconds,
                               "seeds": res, "load_average_after": load_average()})
        print(table(out["results"][-1:]), flush=True)
    if OUT.is_file():  # keep the data sets this run did not measure
        ran = {r["data"] for r in out["results"]}
        out["results"] = [r for r in json.loads(OUT.read_text())["results"] if r["data"] not in ran] + out["results"]
    OUT.write_text(json.dumps(out, indent=1))
    print(table(out["results"]))


if __name__ == "__main__":
    main()
