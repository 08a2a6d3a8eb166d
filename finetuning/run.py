"""Fine-tuning: train a pretrained CNN end to end on a data set, resumably.

``finetune(FinetuneConfig(data, backbone, mode, out))`` builds the backbone with a new classifier for the data's
classes, freezes it according to ``mode`` (``head``, ``last:N``, ``full``, ``scratch``; see
:mod:`transferlab.finetuning.model`), trains it with AdamW (or SGD with momentum), a linear warm-up and a
cosine decay defined by the requested number of epochs, keeps the weights of the epoch with the
best validation accuracy (early stopping with ``patience``), and reports the test accuracy of
those weights. Validation data is the data set's own ``val`` split, else a seeded stratified
``val_fraction`` of train; the test split is only used once, at the end.

Files in ``out``
----------------
Integrity rule of the run directory
-----------------------------------
``checkpoint.pt``   after every epoch (atomic, ``transferlab.util.atomic_write``); a rerun with the
                    same ``out`` and the same configuration continues from it exactly, a rerun
                    with another configuration is refused unless ``overwrite`` (the schedule
                    depends on ``epochs``, so a finished 1-epoch run is *not* the first epoch of
                    a 2-epoch run).
``metrics.json``    per-epoch history, ``val_accuracy``, ``test_accuracy``, ``epochs_run``, seconds
                    per epoch, the trainable groups and parameter names, the resolved
                    configuration and versions; rewritten after every epoch with ``complete`` false.
``model.pt``        the final weights (state dict) and ``model.json`` what :func:`load_finetuned`
                    needs to rebuild the model for inference (with the resolved extraction spec);
                    both written atomically after the test evaluation, ``model.json`` last, and
                    ``metrics.json`` with ``complete`` true after them: a run is finished work
                    only when ``metrics.json`` says ``complete``. A kill leaves the last
                    checkpoint, from which the same command resumes. A full disk stops the run
                    with a one-line error; the atomic writes leave the previous checkpoint and
                    metrics and no temporary file, so the same command resumes from there.

Default learning rates (AdamW; SGD uses 10x): ``head`` 1e-3, ``last:N`` 1e-3, ``full`` 3e-4 for the
classifier with a geometric spread down to 3e-6 for the stem (``lr_spread`` 100), ``scratch`` 1e-3.
Weight decay 0.01 (AdamW) or 5e-4 (SGD), none on biases and normalisation weights. Warm-up 10% of
the steps. Pretrained BatchNorm statistics stay fixed (``bn_stats="frozen"``) except in ``scratch``.
AMP (bf16 when supported, else fp16 with a GradScaler) and channels_last only on CUDA.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from transferlab.classifiers.holdout import stratified_sample, validation_source
from transferlab.features.backbones import resolve_device
from transferlab.features.data import load_dataset
from transferlab.features.spec import ExtractionSpec, resolve_image_size
from transferlab.util import UserInputError, library_versions, sha256_json, write_json

from .config import FinetuneConfig
from .model import (
    DEFAULT_LR,
    DEFAULT_LR_SPREAD,
    DEFAULT_WEIGHT_DECAY,
    SGD_LR_FACTOR,
    WarmupCosine,
    build_finetune_model,
    init_classifier_from_head,
    make_optimizer,
    optimizer_param_groups,
    parse_mode,
)
from .saved import save_finetuned
from .train import (
    CHECKPOINT_FORMAT,
    SplitData,
    Trainer,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)

__all__ = ["RUN_FILES", "config_key", "epoch_line", "finetune", "finetune_splits", "pass_rates"]

RUN_FILES = ("checkpoint.pt", "metrics.json", "model.pt", "model.json")
# configuration entries that do not change the numbers (a run may resume with other values)
UNKEYED = ("data", "device", "num_workers")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserInputError(message)


def _prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserInputError(f"cannot write to --out {out} ({exc.strerror or exc.__class__.__name__}); "
                             f"choose a writable directory") from None
    return out


def finetune_splits(ds, val_fraction: float, max_train: int | None, seed: int) -> tuple:
    """``(train, val, test, val_source)`` of a run. Validation rows by
    :func:`~transferlab.classifiers.holdout.validation_source` (the heads' rows), none with ``val_fraction``
    0 and no ``val`` split; ``max_train`` caps the training rows (stratified)."""
    tr = ds.splits["train"]
    idx, val, source = np.arange(len(tr)), None, "none"
    n_val_split = len(ds.splits["val"]) if "val" in ds.splits else 0
    if n_val_split or val_fraction > 0:
        idx, val_idx, source, reason = validation_source(tr.labels, n_val_split, val_fraction, seed)
        _check(reason is None, f"{ds.spec}: cannot hold out {val_fraction:g} of the training split for validation "
                               f"({reason}); use --val-fraction 0 or more data")
        val = SplitData.from_split(ds.splits["val"] if n_val_split else tr, val_idx)
    if max_train is not None:
        idx = idx[stratified_sample(tr.labels[idx], max_train, seed)]
    return SplitData.from_split(tr, idx), val, SplitData.from_split(ds.splits["test"]), source


def config_key(cfg: dict) -> str:
    return sha256_json({k: v for k, v in cfg.items() if k not in UNKEYED})


def _resolve_amp(amp: str, dev: torch.device) -> str:
    if dev.type != "cuda":
        _check(amp in ("auto", "off"), f"--amp {amp} needs a CUDA device; use --amp off (or auto) on {dev.type}")
        return "off"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def _refuse_other_config(out: Path, old: dict, new: dict) -> None:
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in UNKEYED and old.get(k) != new.get(k)]
    raise UserInputError(f"--out {out} holds a run with another configuration ({'; '.join(diff[:4]) or 'versions'}); "
                         f"use another --out or pass --overwrite to discard it")


def epoch_line(row: dict, epochs: int, n_train: int, history: list, stopped: bool) -> str:
    """One epoch's progress line: losses, accuracies, training images/s and the whole run's remaining time."""
    va = "-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
    rate = n_train / max(row["train_seconds"], 1e-9)
    mean = sum(h["seconds"] for h in history) / max(1, len(history))
    left = 0.0 if stopped else (epochs - row["epoch"]) * mean
    clock = time.strftime("%H:%M:%S", time.gmtime(left))
    eta = "done" if left == 0 else f"ETA {clock} for {epochs - row['epoch']} more"
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, "
            f"train acc {row['train_accuracy']:.4f}, "
            f"val acc {va}, {row['seconds']:.1f} s ({rate:.0f} img/s), {eta}")


def finetune(config: "FinetuneConfig | str | None" = None, backbone: str | None = None, *, progress: bool = True,
             on_epoch=None, **overrides) -> dict:
    """Fine-tune a backbone on a data set and return the metrics (also in ``out/metrics.json``).

    Parameters
    ----------
    config : FinetuneConfig, or a data spec
        The whole configuration; a data spec (``digits``, ``npz:PATH``, ...) is taken as
        ``FinetuneConfig(data=config, backbone=backbone, **overrides)``.
    progress : bool
        Progress bars and per-epoch lines on stderr.
    on_epoch : callable, optional
        Called with each finished epoch's history row, after ``metrics.json`` holds it (e.g. a tracker's).
    **overrides
        Fields of :class:`FinetuneConfig` (``mode``, ``epochs``, ``out``, ...).

    Examples
    --------
    >>> m = finetune("digits", mode="last:2", epochs=1, image_size=32, augment=False)  # doctest: +SKIP
    >>> m["test_accuracy"]                                                              # doctest: +SKIP
    """
    if isinstance(config, FinetuneConfig):
        c = replace(config, **overrides) if overrides else config
    else:
        if config is not None:
            overrides["data"] = config
        if backbone is not None:
            overrides["backbone"] = backbone
        c = FinetuneConfig(**overrides)
    mode, optimizer, seed, epochs = parse_mode(c.mode), c.optimizer, c.seed, c.epochs
    dev = resolve_device(c.device)
    amp = _resolve_amp(c.amp, dev)
    ds = load_dataset(c.data, seed=seed)
    size = resolve_image_size(c.image_size, ds, c.backbone)
    if progress:
        print(size.line(), file=sys.stderr)
    out = Path(c.out).expanduser() if c.out else Path("runs") / (
        f"finetune_{ds.short_name}_{str(c.backbone).split(':')[-1]}_{mode.name.replace(':', '')}")
    _prepare_out(out)
    train, val, test, val_source = finetune_splits(ds, c.val_fraction, c.max_train, seed)
    _check(c.patience is None or val is not None, "--patience needs validation data; use --val-fraction > 0")
    _check(len(ds.class_names) >= 2 and np.unique(train.labels).size >= 2,
           f"{ds.spec}: the training split has a single class; a classifier needs at least two")
    num_classes = len(ds.class_names)
    fm = build_finetune_model(c.backbone, mode, num_classes, c.weights, size.size, seed,
                              bn_stats="update" if mode.kind == "scratch" else c.bn_stats)
    bb = fm.backbone
    spec = ExtractionSpec(bb.spec, bb.weights, seed, size.size, "gap", "float32").resolve(bb)
    image_size = spec.image_size
    head_info = init_classifier_from_head(fm, c.init_head_from, fm.catalog_groups[-1]) if c.init_head_from else None

    lr = float(c.lr if c.lr is not None else DEFAULT_LR[mode.kind] * (SGD_LR_FACTOR if optimizer == "sgd" else 1.0))
    cfg = {"data": ds.spec, "data_fingerprint": ds.fingerprint, "backbone": bb.spec, "weights": bb.weights,
           "weights_sha256": bb.weights_sha256, "mode": mode.name, "epochs": int(epochs), "lr": lr,
           "lr_spread": float(c.lr_spread if c.lr_spread is not None else DEFAULT_LR_SPREAD[mode.kind]),
           "image_size": image_size, "batch_size": int(c.batch_size), "accumulate": int(c.accumulate),
           "optimizer": optimizer,
           "weight_decay": float(c.weight_decay if c.weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer]),
           "warmup_epochs": float(c.warmup_epochs if c.warmup_epochs is not None else 0.1 * epochs),
           "bn_stats": fm.bn_stats, "label_smoothing": float(c.label_smoothing), "augment": bool(c.augment),
           "patience": c.patience, "val_fraction": float(c.val_fraction), "val_source": val_source,
           "max_train": c.max_train, "seed": int(seed), "exif_transpose": spec.exif_transpose,
           "init_head_from": head_info["dir"] if head_info else None,
           "init_head_sha256": head_info["sha256"] if head_info else None,
           "amp": amp, "channels_last": dev.type == "cuda", "device": str(dev),
           "num_workers": int(c.num_workers if c.num_workers is not None else
                              (0 if train.images is not None else min(4, os.cpu_count() or 1)))}
    key = config_key(cfg)

    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if ckpt_path.exists() and not c.overwrite:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["config_key"] != key:
            _refuse_other_config(out, ckpt.get("config") or {}, cfg)
        if not c.resume:
            ckpt = None
    for tmp in out.glob(".*.tmp"):  # left by a kill during an atomic write
        tmp.unlink(missing_ok=True)
    if ckpt is None:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)

    model = fm.model.to(dev)
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(optimizer, optimizer_param_groups(fm, lr, cfg["lr_spread"], cfg["weight_decay"]), lr)
    trainer = Trainer(fm, opt, None, cfg, dev, train, val, test, cfg["num_workers"], progress)
    per_epoch = trainer.steps_per_epoch()
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(round(cfg["warmup_epochs"] * per_epoch), epochs * per_epoch))
    seed_everything(seed)
    st = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "best_state": None, "bad_epochs": 0, "stopped": False,
          "history": []}
    if ckpt is not None:
        trainer.load_state(ckpt)
        set_rng_state(ckpt["rng"])
        st.update({k: ckpt[k] for k in st})
        if progress and st["epoch"] < epochs and not st["stopped"]:
            print(f"resuming {out} after epoch {st['epoch']} of {epochs}", file=sys.stderr)

    base = {**_metrics_base(fm, cfg, key, ds, train, val, test, head_info, out), "image_size_from": size.how}
    try:
        while st["epoch"] < epochs and not st["stopped"]:
            epoch = st["epoch"] + 1
            t0 = time.perf_counter()
            row = {"epoch": epoch, **trainer.train_epoch(epoch)}
            row["val_accuracy"] = trainer.evaluate(val, "validate") if val is not None else None
            row["lr_end"] = max(g["lr"] for g in opt.param_groups)  # the classifier's, after the epoch
            row["seconds"] = time.perf_counter() - t0
            acc = row["val_accuracy"]
            if acc is None or acc > st["best_val"]:
                st.update(best_val=acc if acc is not None else -1.0, best_epoch=epoch, bad_epochs=0,
                          best_state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            else:
                st["bad_epochs"] += 1
            st["stopped"] = c.patience is not None and st["bad_epochs"] >= c.patience and epoch < epochs
            st["history"].append(row)
            st["epoch"] = epoch
            with _writing(out, st["epoch"] - 1):
                save_checkpoint(ckpt_path, {"format": CHECKPOINT_FORMAT, "config_key": key, "config": cfg,
                                            **trainer.state(), "rng": rng_state(), **st})
            with _writing(out, st["epoch"]):
                write_json(out / "metrics.json", {**base, **_summary(st), "complete": False})
            if progress:
                print(epoch_line(row, epochs, len(train), st["history"], st["stopped"]), file=sys.stderr)
            if on_epoch is not None:
                on_epoch(dict(row))
    except KeyboardInterrupt:
        print(f"\ninterrupted; the checkpoint after epoch {st['epoch']} is in {out}: rerun the same command "
              f"to continue", file=sys.stderr)
        raise

    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"])
    test_acc = trainer.evaluate(test, "test")
    metrics = {**base, **_summary(st), "test_accuracy": test_acc, "complete": True}
    with _writing(out, st["epoch"]):
        save_finetuned(out, fm, spec, cfg, metrics)
        write_json(out / "metrics.json", metrics)
    return metrics


REPEATS = 3  # timed passes in pass_rates, the fastest kept


def pass_rates(backbone: str, mode: str, num_classes: int, image_size: int, *, device: str = "auto",
               batch_size: int = 64, seed: int = 0, batches: int = 2, clock: str = "auto") -> dict:
    """Images per second of the training pass (forward, backward, optimizer step) and of the forward pass
    (evaluation) of ``backbone`` fine-tuned by ``mode`` at ``image_size`` px, measured here by the
    :class:`~transferlab.finetuning.train.Trainer` on ``batches`` batches of synthetic images, after one
    pass over them that pays for starting up, the fastest of :data:`REPEATS` timed passes. Returns
    ``{"train", "forward", "clock", "load", "threads"}``.

    ``clock``: ``"wall"`` times the passes by the wall clock; ``"cpu"`` by this process's CPU time on one
    thread, times torch's thread count: what the passes would cost with the cores to themselves, whatever
    else runs now (a rate taken by the wall clock on a shared machine moves with other people's load, and
    advice priced from it with them; it assumes perfect scaling over the threads, so it errs fast by the
    parallel efficiency); ``"auto"`` (what advise uses): the wall clock on a GPU or where the machine has
    a core for every runnable process (1-minute load average at most the core count), else CPU time.
    ``load`` is that load average, ``clock`` the clock used, ``threads`` torch's thread count."""
    if clock not in ("auto", "wall", "cpu"):
        raise ValueError(f"clock must be auto, wall or cpu, not {clock!r}")
    mode = parse_mode(mode)
    dev = resolve_device(device)
    fm = build_finetune_model(backbone, mode, num_classes, "random" if mode.kind == "scratch" else "imagenet",
                              image_size, seed, bn_stats="update" if mode.kind == "scratch" else None)
    gen = torch.Generator().manual_seed(seed)
    n = batch_size * batches
    data = SplitData(np.arange(n) % num_classes,
                     images=torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=gen))
    cfg = {"image_size": image_size, "batch_size": batch_size, "accumulate": 1, "seed": seed, "augment": False,
           "epochs": 1 + REPEATS, "amp": _resolve_amp("auto", dev), "channels_last": dev.type == "cuda",
           "label_smoothing": 0.0}
    fm.model.to(dev)
    opt = make_optimizer("adamw", optimizer_param_groups(fm, DEFAULT_LR[mode.kind], 1.0, 0.0), DEFAULT_LR[mode.kind])
    trainer = Trainer(fm, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), cfg, dev, data, None, data,
                      progress=False)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if clock == "auto":
        clock = "wall" if dev.type != "cpu" or load <= (os.cpu_count() or 1) else "cpu"
    threads = torch.get_num_threads()
    now = time.perf_counter if clock == "wall" else time.process_time
    share = 1 if clock == "wall" else threads
    train_s, forward_s = [], []
    if clock == "cpu":  # one thread: no OpenMP thread spins waiting for a sibling that another process holds
        torch.set_num_threads(1)
    try:
        trainer.train_epoch(1)
        trainer.evaluate(data, "warm-up")
        for epoch in range(2, 2 + REPEATS):  # the fastest of a few: the least disturbed by whatever else runs
            t0 = now()
            trainer.train_epoch(epoch)
            t1 = now()
            trainer.evaluate(data, "forward")
            train_s.append(t1 - t0)
            forward_s.append(now() - t1)
    finally:
        torch.set_num_threads(threads)
        fm.model.to("cpu")
    return {"train": n * share / max(min(train_s), 1e-9), "forward": n * share / max(min(forward_s), 1e-9),
            "clock": clock, "load": round(load, 2), "threads": threads}


@contextmanager
def _writing(out: Path, resumes_after: int):
    """A failed write (full disk) is a one-line error; atomic_write has already removed its temporary file."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError):  # torch.save reports a failed write as RuntimeError over the OSError
            if not isinstance(exc.__context__, OSError):
                raise
            exc = exc.__context__
        raise UserInputError(f"cannot write to {out} ({exc.strerror or exc}); nothing half-written is left: free "
                             f"space and rerun the same command (it resumes after epoch {resumes_after})") from None


def _summary(st: dict) -> dict:
    hist = st["history"]
    secs = [h["seconds"] for h in hist]
    return {"history": hist, "epochs_run": len(hist), "best_epoch": st["best_epoch"],
            "stopped_early": bool(st["stopped"]),
            "val_accuracy": st["best_val"] if hist and hist[0]["val_accuracy"] is not None else None,
            "seconds_per_epoch": float(np.mean(secs)) if secs else None, "fit_seconds": float(np.sum(secs))}


def _metrics_base(fm, cfg, key, ds, train, val, test, head_info, out) -> dict:
    from transferlab.features.layers import catalog  # the one definition of depth
    from transferlab.features.spec import DEFAULT_IMAGE_SIZE

    last = catalog(fm.model, [fm.catalog_groups[-1]], image_size=min(cfg["image_size"], DEFAULT_IMAGE_SIZE))[0]
    names = fm.trainable_names
    params = dict(fm.model.named_parameters())
    return {"mode": cfg["mode"], "data": ds.spec, "backbone": cfg["backbone"], "weights": cfg["weights"],
            "out": str(out), "num_classes": fm.num_classes, "class_names": list(ds.class_names),
            "feature_dim": fm.feature_dim, "n_train": len(train), "n_val": len(val) if val is not None else 0,
            "n_test": len(test), "val_source": cfg["val_source"],
            "trainable": {"groups": list(fm.trainable_groups),
                          "frozen_groups": [g for g in fm.groups if g not in fm.trainable_groups],
                          "n_tensors": len(names), "n_parameters": int(sum(params[n].numel() for n in names)),
                          "n_parameters_total": int(sum(p.numel() for p in params.values())), "names": names},
            "last_layer": last.name, "depth": last.depth, "rel_depth": last.rel_depth,
            "init_head": head_info, "config": cfg, "config_key": key, "versions": library_versions()}
