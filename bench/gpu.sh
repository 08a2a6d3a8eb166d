#!/usr/bin/env bash
# The GPU figures (P7), one script, under 5 minutes on one data-centre GPU; run it whenever a GPU is lent.
#
#   bash bench/gpu.sh                      # writes bench/gpu.json, prints the table for bench/README.md
#   DEVICE=cpu SMALL=1 bash bench/gpu.sh   # a dry run of every code path on the CPU, tiny sizes (no figures)
#
# Figures, each against its limit or a published figure:
#  1. P1/P2 on GPU: lite0 and torchvision resnet50 at 224 px, bf16 autocast, channels_last: pure forward
#     img/s, extraction (every default layer -> HDF5) / pure forward, all layers / last layer; resnet50
#     against published ResNet-50 AMP channels_last inference (~5,000 img/s RTX 4090; 5,742 img/s A100,
#     batch 256). Random weights: same speed as ImageNet ones, and the GPU machine has no network.
#  2. JPEG decode: torchvision.io.decode_jpeg on the GPU (batched) against the CPU, CIFAR-10 JPEG bytes.
#  3. logreg: the 45-value C grid + refit on the GPU against one default scikit-learn fit on the CPU,
#     on lite0 bn2 features of 50,000 CIFAR-10 images (extracted here on the GPU).
#  4. AMP fine-tuning: train steps/s of lite0 at 224 px (bf16, channels_last, AdamW) in a plain loop,
#     and `transferlab.finetuning` (mode full, one epoch) against it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export DEVICE=${DEVICE:-cuda} SMALL=${SMALL:-0}
exec "$PY" - <<'PYEOF'
import io, json, os, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "bench")
from common import CIFAR_JPEG, SHARED, machine, spread  # noqa: E402

DEV, SMALL = os.environ["DEVICE"], os.environ["SMALL"] == "1"
if DEV == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device: run with DEVICE=cpu SMALL=1 for a dry run")
BATCH = 16 if SMALL else 256
N_IMG = 64 if SMALL else 4096
SIZE = 32 if SMALL else 224  # the dry run only checks the code paths
rows, t_start = [], time.perf_counter()


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def row(name, ours, peer, ratio, note=""):
    rows.append({"figure": name, "transferlab": ours, "peer_or_limit": peer, "ratio": round(ratio, 3), "note": note})
    print(f"| {name} | {ours} | {peer} | {ratio:.3f} | {note} |", flush=True)


def amp():
    if DEV != "cuda":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16)


# --- 1. extraction on the GPU -----------------------------------------------------------------------
from transferlab.features import build_backbone, extract  # noqa: E402
from transferlab.features.data import Dataset, Split  # noqa: E402
from transferlab.features.layers import default_layers  # noqa: E402
from transferlab.features.preprocess import normalize_batch  # noqa: E402

rng = np.random.default_rng(0)
images = rng.integers(0, 256, (N_IMG, 32, 32, 3), dtype=np.uint8)  # CIFAR-sized input, resized to 224 on device
labels = np.arange(N_IMG) % 10
print("| figure | TransferLab | limit or peer | ratio | note |\n| --- | --- | --- | ---: | --- |")
for spec, weights in (("lite0", "imagenet"), ("torchvision:resnet50", "random")):
    bb = build_backbone(spec, weights)
    model = bb.model.to(DEV).eval()
    if DEV == "cuda":
        model = model.to(memory_format=torch.channels_last)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)

    def forward():
        with torch.inference_mode(), amp():
            for s in range(0, N_IMG, BATCH):
                xb = normalize_batch(x_all[s:s + BATCH].to(DEV, non_blocking=True), SIZE, bb.mean, bb.std,
                                     bb.interpolation)
                model(xb.contiguous(memory_format=torch.channels_last) if DEV == "cuda" else xb)
        sync()

    forward()  # warm-up: cuDNN autotuning, allocator
    t = time.perf_counter(); forward(); fwd = time.perf_counter() - t
    rate = N_IMG / fwd
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, layers in (("all", "all"), ("last", default_layers(bb.model)[-1])):
            ds = Dataset("npz:gpu", {"train": Split("train", labels, images=images)}, [str(i) for i in range(10)],
                         f"gpu-{spec}-{name}")
            t = time.perf_counter()
            extract(ds, bb, layers=layers, image_size=SIZE, cache_dir=Path(tmp) / name, batch_size=BATCH,
                    device=DEV, progress=False, log=lambda m: None)
            sync(); times[name] = time.perf_counter() - t
    row(f"{spec} forward, {SIZE} px, bf16, channels_last, batch {BATCH}", f"{rate:.0f} img/s",
        "ResNet-50 AMP: ~5,000 img/s RTX 4090, 5,742 img/s A100 (batch 256)",
        rate / 5742 if "resnet50" in spec else float("nan"), "ratio against the A100 figure" if "resnet50" in spec else "")
    row(f"P1 {spec} extraction (all layers -> HDF5) / pure forward, {SIZE} px", f"{N_IMG / times['all']:.0f} img/s",
        f"{rate:.0f} img/s", (N_IMG / times["all"]) / rate, "incl. fixed costs (probe, file)")
    row(f"P2 {spec} all layers / last layer, {SIZE} px", f"{times['all']:.2f} s", f"{times['last']:.2f} s",
        times["all"] / times["last"])
    bb.model.to("cpu")

# --- 2. JPEG decode ----------------------------------------------------------------------------------
from torchvision.io import decode_jpeg  # noqa: E402

if CIFAR_JPEG.is_file():
    d = np.load(CIFAR_JPEG)
    o, b = d["train_offsets"], d["train_jpeg"]
    n = 256 if SMALL else 20000
    blobs = [torch.frombuffer(bytearray(b[o[i]:o[i + 1]].tobytes()), dtype=torch.uint8) for i in range(n)]
    t = time.perf_counter(); [decode_jpeg(x) for x in blobs]; cpu_s = time.perf_counter() - t
    decode_jpeg(blobs[:BATCH], device=DEV); sync()
    t = time.perf_counter()
    for s in range(0, n, 1024):
        decode_jpeg(blobs[s:s + 1024], device=DEV)
    sync(); gpu_s = time.perf_counter() - t
    row(f"JPEG decode, {n} CIFAR-10 images, decode_jpeg on {DEV} (batches of 1,024) / CPU (1 thread)",
        f"{n / gpu_s:.0f} img/s", f"CPU {n / cpu_s:.0f} img/s", cpu_s / gpu_s)
else:
    print(f"skip JPEG decode: {CIFAR_JPEG} absent")

# --- 3. logreg grid on the GPU against scikit-learn on the CPU ---------------------------------------
import warnings  # noqa: E402

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from transferlab.classifiers import select_and_fit  # noqa: E402
from transferlab.features.cache import load_split  # noqa: E402

if CIFAR_JPEG.is_file():
    import subprocess
    npz = Path(tempfile.gettempdir()) / "transferlab-gpu-cifar10.npz"
    if not npz.is_file():
        subprocess.run([sys.executable, str(SHARED / "materialize.py"), "npz", str(npz)], check=True)
    data = np.load(npz)
    n_tr, n_te = (2000, 500) if SMALL else (50000, 10000)
    tr, te = spread(len(data["y_train"]), n_tr), spread(len(data["y_test"]), n_te)  # the file is sorted by class
    ds = Dataset("npz:gpu-cifar", {"train": Split("train", data["y_train"][tr], images=data["x_train"][tr]),
                                   "test": Split("test", data["y_test"][te], images=data["x_test"][te])},
                 [str(c) for c in data["class_names"]], f"gpu-cifar-{n_tr}")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = extract(ds, "lite0", layers="bn2", image_size=64, cache_dir=tmp, batch_size=BATCH, device=DEV,
                       progress=False, log=lambda m: None)
        ext_s = time.perf_counter() - t
        X, y, _ = load_split(path, "train", "bn2")
        Xt, yt, _ = load_split(path, "test", "bn2")
    t = time.perf_counter()
    res = select_and_fit(X, y, None, None, Xt, yt, "logreg", full_grid=True, head_params={"device": DEV})
    sync(); ours = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        sk = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
        peer = time.perf_counter() - t
    row(f"logreg 45-C grid + refit on {DEV}, {n_tr:,} x 1,280 (features extracted on {DEV} in {ext_s:.0f} s)",
        f"{ours:.1f} s, test {res.test_accuracy:.3f}",
        f"one default LogisticRegression on the CPU {peer:.1f} s, test {sk.score(Xt, yt):.3f}", ours / peer)

# --- 4. AMP fine-tuning ------------------------------------------------------------------------------
bb = build_backbone("lite0")
model = bb.model.to(DEV).train()
if DEV == "cuda":
    model = model.to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
fb = 8 if SMALL else 128
x = torch.randn(fb, 3, SIZE, SIZE, device=DEV)
x = x.contiguous(memory_format=torch.channels_last) if DEV == "cuda" else x
yb = torch.randint(0, 1000, (fb,), device=DEV)
steps = 3 if SMALL else 40
for i in range(steps + 5):
    if i == 5:
        sync(); t = time.perf_counter()
    with amp():
        loss = torch.nn.functional.cross_entropy(model(x), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
sync(); loop_rate = steps * fb / (time.perf_counter() - t)
if CIFAR_JPEG.is_file():
    from transferlab.finetuning import finetune
    n_ft = 256 if SMALL else 10000
    small = Path(tempfile.gettempdir()) / f"transferlab-gpu-ft-{n_ft}.npz"
    tr, te = spread(len(data["y_train"]), n_ft), spread(len(data["y_test"]), n_ft // 10)
    np.savez(small, x_train=data["x_train"][tr], y_train=data["y_train"][tr], x_test=data["x_test"][te],
             y_test=data["y_test"][te], class_names=data["class_names"])
    with tempfile.TemporaryDirectory() as tmp:
        m = finetune(f"npz:{small}", "lite0", mode="full", epochs=1, image_size=SIZE, batch_size=fb, device=DEV,
                     out=tmp, progress=False, augment=False)
    ours_rate = m["n_train"] / m["fit_seconds"]
    row(f"AMP fine-tuning, lite0, {SIZE} px, batch {fb}: transferlab finetune (1 epoch, {m['n_train']} images, "
        f"incl. validation) / plain bf16 loop", f"{ours_rate:.0f} img/s", f"{loop_rate:.0f} img/s "
        f"({loop_rate / fb:.1f} steps/s)", ours_rate / loop_rate)
else:
    row(f"AMP training loop, lite0, {SIZE} px, batch {fb}", f"{loop_rate:.0f} img/s", "-", float("nan"))

out = {"machine": machine(), "device": DEV, "small": SMALL, "seconds": round(time.perf_counter() - t_start, 1),
       "figures": rows}
if not SMALL:
    Path("bench/gpu.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
print(f"done in {out['seconds']} s" + ("" if SMALL else "; wrote bench/gpu.json"))
PYEOF
