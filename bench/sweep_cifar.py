"""Pretrained against random weights on a 1,000-image CIFAR-10 slice (the sweep's acceptance check).

    python bench/sweep_cifar.py [OUT_DIR] [IMAGE_SIZE]

Takes the first 100 train images of each class (1,000) and the 1,000 test images of
../shared/data/cifar10_small.npz, runs `sweep --weights imagenet,random --heads logreg` over every
lite0 layer and prints the best test accuracy per weights. Skips cleanly when the data is absent.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transferlab.pipeline.report import best_per_curve  # noqa: E402
from transferlab.pipeline.sweep import SweepConfig, sweep  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_small.npz"


def main():
    if not CIFAR.is_file():
        print(f"skip: {CIFAR} not found")
        return
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/cifar1k"
    size = sys.argv[2] if len(sys.argv) > 2 else "64"
    d = np.load(CIFAR)
    idx = np.concatenate([np.flatnonzero(d["y_train"] == c)[:100] for c in range(10)])
    idx.sort()
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "cifar10_1k.npz"
        np.savez(npz, x_train=d["x_train"][idx], y_train=d["y_train"][idx], x_test=d["x_test"], y_test=d["y_test"],
                 class_names=d["class_names"])
        t = time.perf_counter()
        summary = sweep(SweepConfig(data=f"npz:{npz}", weights="imagenet,random", heads="logreg", image_size=size,
                                    out=out, cache_dir=str(Path(tmp) / "cache")), progress=False)
    print(f"sweep: {time.perf_counter() - t:.1f} s (extract {summary['timing']['extract_seconds']} s, "
          f"heads {summary['timing']['train_seconds']} s); report in {out}/report.md")
    for b in best_per_curve(summary.summary["rows"]):  # the rows as results.csv holds them
        print(f"{b['weights']:8s} chosen on validation {b['val_choice']:9s} test {b['val_choice_test']:.3f}   "
              f"last layer {b['last_layer']} {b['last_test']:.3f}")


if __name__ == "__main__":
    main()
