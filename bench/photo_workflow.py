"""A new user's workflow on a flat folder of their own JPEG photos, timed (writes nothing in the project).

Takes N images of K CIFAR-10 classes from ../shared/data/cifar10_full_jpeg.npz as the original JPEG
files in a flat ``photos/<class>/*.jpg`` folder (no split folders), plus a few new photos, then runs
what the README tells a user: sweep (the tool splits test off), train --layer best, predict on a folder
with --out CSV. Prints each step's wall time and the numbers.

    python bench/photo_workflow.py [--per-class 60] [--classes 4] [--scratch /tmp/tl_photos]
"""
import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from transferlab.pipeline.cli import main

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_full_jpeg.npz"


def step(name, *argv):
    t0 = time.perf_counter()
    code = main([str(a) for a in argv])
    print(f"## {name}: exit {code}, {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return code


def main_():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--scratch", default="/tmp/tl_photos")
    a = ap.parse_args()
    if not SRC.is_file():
        sys.exit(f"skipped: {SRC} is absent")
    root = Path(a.scratch)
    shutil.rmtree(root, ignore_errors=True)
    d = np.load(SRC)
    names = [str(c) for c in d["class_names"]]
    for split, folder, per in (("train", root / "photos", a.per_class), ("test", root / "new", 5)):
        data, off, y = d[f"{split}_jpeg"], d[f"{split}_offsets"], d[f"y_{split}"]
        for c in range(a.classes):
            out = folder / names[c] if split == "train" else folder
            out.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(y == c)[:per]:
                (out / f"{names[c]}_{i}.jpg").write_bytes(data[off[i]:off[i + 1]].tobytes())
    (root / "new" / "broken.jpg").write_bytes(b"not a jpeg")
    cache = root / "cache"
    assert step("sweep", "sweep", "--data", root / "photos", "--heads", "logreg", "--out", root / "run",
                "--cache-dir", cache, "--quiet") == 0
    assert step("warm sweep", "sweep", "--data", root / "photos", "--heads", "logreg", "--out", root / "run",
                "--cache-dir", cache, "--quiet") == 0
    assert step("train --layer best", "train", "--features", root / "run", "--layer", "best", "--out",
                root / "best", "--quiet") == 0
    step("predict a folder", "predict", "--model", root / "run", root / "new", "--out", root / "pred.csv", "--quiet")
    rows = list(csv.DictReader(open(root / "pred.csv")))
    ok = [r for r in rows if not r["error"]]
    right = sum(Path(r["path"]).name.split("_")[0] == r["class"] for r in ok)
    s = json.loads((root / "run" / "results.json").read_text())
    print(f"data layout: {s['data_layout']}")
    print(f"predict: {right}/{len(ok)} new photos right, {len(rows) - len(ok)} unreadable listed")


if __name__ == "__main__":
    main_()
