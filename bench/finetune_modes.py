"""Benchmark: the four fine-tuning modes on a CIFAR-10 slice, and a killed run that resumes.

    .venv/bin/python bench/finetune_modes.py [--epochs 3] [--train 1000] [--test 500] [--size 64]

Reads ``../shared/data/cifar10_small.npz`` (relative to the repository root) and skips with a
message when it is absent. Writes ``bench/finetune_modes.md``. Run directories and the data slice
go to a temporary folder outside the project.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "cifar10_small.npz"
# (row label, mode, extra arguments); the last row is the evidence for freezing BatchNorm statistics
RUNS = (("head", "head", {}), ("last:2", "last:2", {}), ("full", "full", {}), ("scratch", "scratch", {}),
        ("full, bn_stats=update", "full", {"bn_stats": "update"}))


def make_slice(src: Path, dst: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A class-balanced slice of the archive, as an npz data set."""
    rng = np.random.default_rng(seed)
    with np.load(src) as a:
        arrays = {k: a[k] for k in ("x_train", "y_train", "x_test", "y_test", "class_names")}

    def take(y, n):
        classes = np.unique(y)
        per = [rng.permutation(np.flatnonzero(y == c))[: n // len(classes)] for c in classes]
        return np.sort(np.concatenate(per))

    tr, te = take(arrays["y_train"], n_train), take(arrays["y_test"], n_test)
    np.savez(dst, x_train=arrays["x_train"][tr], y_train=arrays["y_train"][tr].astype(np.int64),
             x_test=arrays["x_test"][te], y_test=arrays["y_test"][te].astype(np.int64),
             class_names=arrays["class_names"])
    return dst


def run_modes(npz: Path, work: Path, epochs: int, size: int) -> list:
    from transferlab.finetuning import finetune

    rows = []
    for i, (label, mode, extra) in enumerate(RUNS):
        t0 = time.perf_counter()
        m = finetune(f"npz:{npz}", mode=mode, out=work / f"run{i}", epochs=epochs, image_size=size,
                     batch_size=64, progress=False, overwrite=True, **extra)
        wall = time.perf_counter() - t0
        rows.append({"mode": label, "lr": m["config"]["lr"], "bn_stats": m["config"]["bn_stats"],
                     "trainable": m["trainable"]["n_parameters"],
                     "val": m["val_accuracy"], "test": m["test_accuracy"], "epochs": m["epochs_run"],
                     "sec_epoch": m["seconds_per_epoch"], "wall": wall,
                     "train_loss": [round(h["train_loss"], 3) for h in m["history"]]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def kill_and_resume(npz: Path, work: Path) -> dict:
    """Kill -9 a fine-tuning subprocess after its first checkpoint, rerun it, compare with an unbroken run."""
    from transferlab.finetuning import finetune

    kw = dict(mode="last:2", epochs=3, image_size=32, batch_size=32, max_train=300, progress=False)
    code = ("import sys; sys.path.insert(0, %r); from transferlab.finetuning import finetune; "
            "finetune(%r, out=%r, **%r)" % (str(ROOT), f"npz:{npz}", str(work / "killed"), kw))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    ckpt = work / "killed" / "checkpoint.pt"
    while not ckpt.exists() and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    finished_before_kill = (work / "killed" / "model.pt").exists()
    resumed = finetune(f"npz:{npz}", out=work / "killed", **kw)
    whole = finetune(f"npz:{npz}", out=work / "unbroken", **kw)
    a = torch.load(work / "killed" / "model.pt", weights_only=True)
    b = torch.load(work / "unbroken" / "model.pt", weights_only=True)
    return {"returncode": proc.returncode, "epoch_in_checkpoint_at_kill": at_kill,
            "model_written_before_kill": finished_before_kill, "epochs_run_after_resume": resumed["epochs_run"],
            "requested_epochs": kw["epochs"], "weights_equal_unbroken_run": all(torch.equal(a[k], b[k]) for k in a),
            "test_accuracy_resumed": resumed["test_accuracy"], "test_accuracy_unbroken": whole["test_accuracy"],
            "config": kw}


def write_md(path: Path, rows: list, resume: dict, args, total: float) -> None:
    best_pre = max(r["test"] for r in rows if r["mode"] in ("head", "last:2", "full"))
    scratch = next(r["test"] for r in rows if r["mode"] == "scratch")
    lines = [
        "# Fine-tuning modes on a CIFAR-10 slice",
        "",
        f"Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads); the CPU was shared with other jobs, so times are indicative.",
        f"Data: `cifar10_small.npz`, class-balanced slice of {args.train} train images (10% of them held out, "
        f"stratified, for validation and early-stopping selection) and {args.test} test images; "
        f"{args.size} px input (32 px images upsampled), lite0 ImageNet weights (`scratch`: random init), "
        f"batch 64, {args.epochs} epochs, AdamW, warm-up 10% then cosine, augmentation on "
        f"(random resized crop + flip). Command: `.venv/bin/python bench/finetune_modes.py --epochs {args.epochs} "
        f"--train {args.train} --test {args.test} --size {args.size}`.",
        "",
        "| mode | peak lr | BN statistics | trainable params | val acc | test acc | s / epoch | wall s "
        "| train loss per epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['lr']:g} | {r['bn_stats']} | {r['trainable']:,} | {r['val']:.3f} "
                     f"| {r['test']:.3f} | "
                     f"{r['sec_epoch']:.1f} | {r['wall']:.0f} | {', '.join(map(str, r['train_loss']))} |")
    lines += [
        "",
        f"Best pretrained mode beats scratch: **{best_pre > scratch}** (best pretrained test accuracy "
        f"{best_pre:.3f} vs scratch {scratch:.3f}). Total time {total / 60:.1f} min.",
        "",
        "The last row is `full` with `bn_stats=update` (BatchNorm running statistics re-estimated from "
        "the training batches, as in plain `model.train()`): with timm's TF-port BatchNorm momentum (0.01) "
        "and few steps, the batch statistics of upsampled CIFAR images disturb the pretrained features "
        "during training and the running statistics lag behind; this is why the pretrained modes keep "
        "BatchNorm statistics frozen by default (their affine parameters still learn).",
        "",
        "## Killed run resumes",
        "",
        f"A `finetune(mode=last:2, epochs=3, image_size=32, max_train=300)` subprocess was killed with "
        f"SIGKILL as soon as its first checkpoint appeared (return code {resume['returncode']}); the "
        f"checkpoint then held epoch {resume['epoch_in_checkpoint_at_kill']} and no final model "
        f"(model.pt written before the kill: {resume['model_written_before_kill']}). Rerunning the same call "
        f"with the same `out` continued to epoch {resume['epochs_run_after_resume']} of "
        f"{resume['requested_epochs']} requested; its final weights equal those of an uninterrupted run of "
        f"the same configuration: **{resume['weights_equal_unbroken_run']}** (test accuracy "
        f"{resume['test_accuracy_resumed']:.3f} vs {resume['test_accuracy_unbroken']:.3f}).",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} is absent (the shared CIFAR-10 slice)")
        return 0
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ft_bench_") as tmp:
        work = Path(tmp)
        npz = make_slice(DATA, work / "cifar_slice.npz", args.train, args.test)
        rows = run_modes(npz, work, args.epochs, args.size)
        resume = kill_and_resume(npz, work)
        print(json.dumps(resume), flush=True)
    write_md(Path(__file__).with_suffix(".md"), rows, resume, args, time.perf_counter() - t0)
    print(f"wrote {Path(__file__).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
