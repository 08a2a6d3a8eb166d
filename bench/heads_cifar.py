"""Heads on real features: CIFAR-10 (small), lite0, 64 px, GAP — the heads stage's acceptance check.

    python bench/heads_cifar.py [LAYER ...]      (default: bn2 blocks.5)

1. extracts (or reuses) the features of ../shared/data/cifar10_small.npz;
2. `train_head` with logreg and svm (the selection protocol) per layer;
3. a reference written here with plain scikit-learn: StandardScaler + LogisticRegression, C chosen on
   a stratified 20% validation split of train, refit on train+val, scored on test;
4. the logreg head saved, the test images written as PNG files, `pipeline.predict.predict` on them:
   its accuracy must equal the reported test accuracy.
Prints one line per figure; skips cleanly when the shared data is absent.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transferlab.classifiers import train_head  # noqa: E402
from transferlab.features import extract  # noqa: E402
from transferlab.features.cache import load_split  # noqa: E402
from transferlab.pipeline.predict import predict_rows  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_small.npz"


def sklearn_reference(path, layer, seed=0):
    Xtr, ytr, _ = load_split(path, "train", layer)
    Xte, yte, _ = load_split(path, "test", layer)
    a, v = train_test_split(np.arange(len(ytr)), test_size=0.2, stratify=ytr, random_state=seed)
    best = None
    for C in np.logspace(-4, 2, 7):
        m = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(Xtr[a], ytr[a])
        acc = m.score(Xtr[v], ytr[v])
        if best is None or acc > best[0]:
            best = (acc, C)
    m = make_pipeline(StandardScaler(), LogisticRegression(C=best[1], max_iter=2000)).fit(Xtr, ytr)
    return best[1], m.score(Xte, yte)


def main():
    if not CIFAR.is_file():
        print(f"skip: {CIFAR} not found")
        return
    layers = sys.argv[1:] or ["bn2", "blocks.5"]
    t = time.perf_counter()
    path = extract(f"npz:{CIFAR}", "lite0", layers="all", pool="gap", image_size=64, progress=False,
                   log=lambda m: None)
    print(f"features: {path} ({time.perf_counter() - t:.1f} s, extraction or cache hit)")
    with tempfile.TemporaryDirectory() as tmp:
        for layer in layers:
            for head in ("logreg", "svm"):
                t = time.perf_counter()
                res = train_head(path, layer, head, out=Path(tmp) / f"{head}_{layer}", seed=0)
                print(f"{layer:9s} {head:7s} test {res['test_accuracy']:.4f}  val {res['val_accuracy']:.4f}  "
                      f"params {res['params']}  {time.perf_counter() - t:.1f} s")
            t = time.perf_counter()
            C, acc = sklearn_reference(path, layer)
            print(f"{layer:9s} sklearn reference (standardised logreg, C={C:g} on val): test {acc:.4f}  "
                  f"{time.perf_counter() - t:.1f} s")
        x = np.load(CIFAR)["x_test"]
        y = np.load(CIFAR)["y_test"]
        files = []
        for i, img in enumerate(x):
            files.append(Path(tmp) / f"test_{i:04d}.png")
            Image.fromarray(img).save(files[-1])
        head_dir = Path(tmp) / f"logreg_{layers[0]}"
        import json
        reported = json.loads((head_dir / "head.json").read_text())["test_accuracy"]
        t = time.perf_counter()
        rows = predict_rows(head_dir, files, batch_size=100, progress=False)
        acc = float(np.mean([r["label"] == int(lab) for r, lab in zip(rows, y)]))
        print(f"predict on {len(files)} PNG files ({layers[0]}, logreg): accuracy {acc:.4f} vs reported "
              f"{reported:.4f} ({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
