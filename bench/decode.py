"""JPEG decode against the forward pass, on this machine's CPU (``docs/scaling.md`` uses the figures).

    python bench/decode.py [N_FORWARD]

Decode: five real photographs of ImageNet's size (skimage.data: astronaut, coffee, chelsea, rocket,
immunohistochemistry; 300x451 to 512x640, ImageNet's mean is about 400x350), saved as quality-90
JPEGs, each decoded many times on one thread by PIL (what ``--decode cpu`` workers do), by
torchvision's ``decode_jpeg`` on the CPU, and through the whole worker path (decode, antialiased
resize to 224, normalise: ``features.preprocess.ImageFiles``). Also CIFAR-10's 32x32 JPEGs from
``../shared/data/cifar10_full_jpeg.npz`` when present.

Forward: ResNet-50 (random weights) and lite0 at 224 px, batch 16, on all of torch's threads,
inference mode, the whole network (as an extraction of every layer runs it).
"""
from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "cifar10_full_jpeg.npz"


def rate(fn, items, min_seconds=2.0):
    """Images per second of ``fn`` over ``items``, repeated until ``min_seconds`` have passed."""
    fn(items[0])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        for it in items:
            fn(it)
        n += len(items)
    return n / (time.perf_counter() - t0)


def photos(folder: Path) -> list[Path]:
    import skimage.data as sd

    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"):
        p = folder / f"{name}.jpg"
        Image.fromarray(getattr(sd, name)()).save(p, quality=90)
        paths.append(p)
    return paths


def writer_rate(n: int = 16384, batch: int = 64) -> float:
    """Rows per second that CacheWriter stores (write, flush, commit n_done) for ResNet-50's default layers."""
    from types import SimpleNamespace

    from transferlab.features.cache import CacheWriter
    from transferlab.features.data import Dataset, Split
    from transferlab.features.spec import ExtractionSpec

    dims = {"relu": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}
    infos = [SimpleNamespace(name=k, dim=d, depth=i, rel_depth=i / 4, raw_shape=(d, 1, 1))
             for i, (k, d) in enumerate(dims.items())]
    split = Split("train", np.zeros(n, dtype=np.int64), images=np.zeros((n, 1, 1), dtype=np.uint8))
    data = Dataset("bench", {"train": split}, ["0"], "0" * 64)
    spec = ExtractionSpec("torchvision:resnet50", "random", image_size=224, arch="resnet50", weights_sha256="0",
                          mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bilinear")
    block = {k: np.random.default_rng(0).standard_normal((batch, d)).astype(np.float16) for k, d in dims.items()}
    with tempfile.TemporaryDirectory() as tmp, CacheWriter(Path(tmp) / "w.h5", "k", spec, data, list(dims)) as w:
        w.prepare(split, infos)
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            w.write("train", s, block)
        return n / (time.perf_counter() - t0)


def main(n_forward: int = 64):
    torch.set_num_threads(torch.get_num_threads())
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from transferlab.features.preprocess import ImageFiles

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(Path(tmp))
        sizes = [Image.open(p).size for p in paths]
        kb = np.mean([p.stat().st_size for p in paths]) / 1e3
        raw = [p.read_bytes() for p in paths]
        tensors = [read_file(str(p)) for p in paths]
        old = torch.get_num_threads()
        torch.set_num_threads(1)  # one decode worker = one core
        rows.append(("PIL decode, photo JPEG (one core)",
                     rate(lambda b: Image.open(io.BytesIO(b)).convert("RGB").load(), raw)))
        rows.append(("torchvision decode_jpeg CPU, photo JPEG (one core)",
                     rate(lambda t: decode_jpeg(t, mode=ImageReadMode.RGB), tensors)))
        files = ImageFiles(paths, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
        rows.append(("worker path: PIL decode + resize 224 + normalise (one core)",
                     rate(lambda i: files[i], list(range(len(paths))))))
        if SHARED.is_file():
            z = np.load(SHARED)
            o, blob = z["test_offsets"], z["test_jpeg"]
            small = [blob[o[i]:o[i + 1]].tobytes() for i in range(500)]
            rows.append(("PIL decode, CIFAR-10 32x32 JPEG (one core)",
                         rate(lambda b: Image.open(io.BytesIO(b)).convert("RGB").load(), small)))
        torch.set_num_threads(old)

    import timm

    from transferlab.features import build_backbone

    for name, model in (("ResNet-50", timm.create_model("resnet50", pretrained=False)),
                        ("lite0", build_backbone("lite0", "random").model)):
        model.eval()
        x = torch.randn(16, 3, 224, 224)
        with torch.inference_mode():
            model(x)
            t0 = time.perf_counter()
            done = 0
            while done < n_forward:
                model(x)
                done += x.shape[0]
        rows.append((f"{name} forward 224 px, batch 16 ({torch.get_num_threads()} threads)",
                     done / (time.perf_counter() - t0)))
    rows.append(("cache writer: ResNet-50's 5 layers (3,904 dims, float16), batch 64 rows", writer_rate()))
    print(f"# photos: {len(sizes)} JPEGs, sizes {sizes}, mean {kb:.0f} kB; torch {torch.__version__}")
    print("| what | img/s |\n|---|---|")
    for what, r in rows:
        print(f"| {what} | {r:,.0f} |" if r >= 10 else f"| {what} | {r:.1f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
