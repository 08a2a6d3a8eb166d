"""Extraction throughput against the pure forward pass of the same model on the same images.

    python bench/bench_extract.py [N_IMAGES] [IMAGE_SIZE]

Reads CIFAR-10 (small) from ../shared/data (skips cleanly when absent). Prints images/s for
(1) a plain full forward pass over the preprocessed batches and (2) `features.extract` of every
default layer into a fresh cache (preprocessing, hooks, pooling and HDF5 writes included), and
their ratio, measured in this one run.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transferlab.features import build_backbone, extract  # noqa: E402
from transferlab.features.data import Dataset, Split  # noqa: E402
from transferlab.features.preprocess import normalize_batch, to_rgb_uint8  # noqa: E402

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_small.npz"


def main():
    if not CIFAR.is_file():
        print(f"skip: {CIFAR} not found")
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    d = np.load(CIFAR)
    x, y = d["x_train"][:n], d["y_train"][:n]
    ds = Dataset("npz:bench", {"train": Split("train", y, images=x)}, [str(i) for i in range(10)], f"bench-{n}")
    bb = build_backbone("lite0")
    bs = 64
    print(f"lite0, {n} CIFAR-10 images at {size} px, batch {bs}, torch threads {torch.get_num_threads()}, "
          f"device cpu")
    with torch.inference_mode():  # warm-up
        bb.model(normalize_batch(torch.from_numpy(to_rgb_uint8(x[:bs])).permute(0, 3, 1, 2), size, bb.mean, bb.std))
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, n, bs):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + bs])).permute(0, 3, 1, 2)
            bb.model(normalize_batch(xb, size, bb.mean, bb.std, bb.interpolation))
    fwd = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        extract(ds, bb, layers="all", image_size=size, cache_dir=tmp, batch_size=bs, progress=False, log=lambda m: None)
        ext = time.perf_counter() - t
        t = time.perf_counter()
        extract(ds, bb, layers="bn1,blocks.0,blocks.1,blocks.2", image_size=size, cache_dir=tmp + "/early",
                batch_size=bs, progress=False, log=lambda m: None)
        early = time.perf_counter() - t
    print(f"pure forward (preprocessing + full network): {n / fwd:8.1f} images/s")
    print(f"extract, 9 layers -> HDF5 float16:           {n / ext:8.1f} images/s")
    print(f"ratio extract / forward throughput:          {fwd / ext:8.2f}")
    print(f"extract bn1..blocks.2 (forward stops there):  {n / early:8.1f} images/s "
          f"({fwd / early:.2f}x the full forward)")


if __name__ == "__main__":
    main()
