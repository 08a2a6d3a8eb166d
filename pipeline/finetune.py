"""Fine-tuning: train a pretrained CNN end to end on a data set, resumably.

``finetune(data, backbone, mode, out)`` builds the backbone with a new classifier for the data's
classes, freezes it according to ``mode`` (``head``, ``last:N``, ``full``, ``scratch``; see
:mod:`pipeline.finetune_model`), trains it with AdamW (or SGD with momentum), a linear warm-up and a
cosine decay defined by the requested number of epochs, keeps the weights of the epoch with the
best validation accuracy (early stopping with ``patience``), and reports the test accuracy of
those weights. Validation data is the data set's own ``val`` split, else a seeded stratified
``val_fraction`` of train; the test split is only used once, at the end.

Files in ``out``
----------------
``checkpoint.pt``   after every epoch (atomic); a rerun with the same ``out`` and the same
                    configuration continues from it exactly, a rerun with another configuration is
                    refused unless ``overwrite`` (the schedule depends on ``epochs``, so a finished
                    1-epoch run is *not* the first epoch of a 2-epoch run).
``metrics.json``    per-epoch history, ``val_accuracy``, ``test_accuracy``, ``epochs_run``, seconds
                    per epoch, the trainable groups and parameter names, the resolved
                    configuration and versions; rewritten after every epoch with ``complete`` false.
``model.pt``        the final weights (state dict) and ``model.json`` what :func:`load_finetuned`
                    needs to rebuild the model for inference.

Default learning rates (AdamW; SGD uses 10x): ``head`` 1e-3, ``last:N`` 1e-3, ``full`` 3e-4 for the
classifier with a geometric spread down to 3e-6 for the stem (``lr_spread`` 100), ``scratch`` 1e-3.
Weight decay 0.01 (AdamW) or 5e-4 (SGD), none on biases and normalisation weights. Warm-up 10% of
the steps. Pretrained BatchNorm statistics stay fixed (``bn_stats="frozen"``) except in ``scratch``.
AMP (bf16 when supported, else fp16 with a GradScaler) and channels_last only on CUDA.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from features.backbones import resolve_device
from features.data import load_dataset
from features.errors import UserInputError

from .finetune_model import (DEFAULT_LR, DEFAULT_LR_SPREAD, DEFAULT_WEIGHT_DECAY, SGD_LR_FACTOR, Mode,
                             WarmupCosine, build_finetune_model, init_classifier_from_head, make_optimizer,
                             optimizer_param_groups, parse_mode)
from .finetune_saved import load_finetuned, predict_finetuned, save_finetuned, write_json
from .finetune_train import (CHECKPOINT_FORMAT, SplitData, Trainer, load_checkpoint, rng_state, save_checkpoint,
                             seed_everything, set_rng_state)
from .report import refresh_report
from .results import append_row, read_rows, row_key

__all__ = ["finetune", "parse_mode", "load_finetuned", "predict_finetuned", "Mode"]

RUN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "metrics.json", "model.pt", "model.json")
# configuration entries that do not change the numbers (a run may resume with other values)
UNKEYED = ("data", "device", "num_workers")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserInputError(message)


def _check_arguments(a: dict) -> None:
    num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    whole = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)  # noqa: E731
    _check(a["lr"] is None or (num(a["lr"]) and a["lr"] > 0), f"--lr must be a number > 0, got {a['lr']}")
    _check(whole(a["epochs"]) and a["epochs"] >= 1, f"--epochs must be a whole number >= 1, got {a['epochs']}")
    _check(whole(a["batch_size"]) and a["batch_size"] >= 1, f"--batch-size must be >= 1, got {a['batch_size']}")
    _check(whole(a["accumulate"]) and a["accumulate"] >= 1, f"--accumulate must be >= 1, got {a['accumulate']}")
    _check(a["optimizer"] in ("adamw", "sgd"), f"unknown --optimizer '{a['optimizer']}'; use adamw or sgd")
    _check(a["weight_decay"] is None or (num(a["weight_decay"]) and a["weight_decay"] >= 0),
           f"--weight-decay must be >= 0, got {a['weight_decay']}")
    _check(a["warmup_epochs"] is None or (num(a["warmup_epochs"]) and a["warmup_epochs"] >= 0),
           f"--warmup-epochs must be >= 0, got {a['warmup_epochs']}")
    _check(num(a["label_smoothing"]) and 0 <= a["label_smoothing"] < 1,
           f"--label-smoothing must be in [0, 1), got {a['label_smoothing']}")
    _check(num(a["val_fraction"]) and 0 <= a["val_fraction"] < 1,
           f"--val-fraction must be in [0, 1), got {a['val_fraction']}")
    _check(a["patience"] is None or (whole(a["patience"]) and a["patience"] >= 1),
           f"--patience must be a whole number >= 1 (or left out for no early stopping), got {a['patience']}")
    _check(a["max_train"] is None or (whole(a["max_train"]) and a["max_train"] >= 1),
           f"--max-train must be >= 1, got {a['max_train']}")
    _check(a["image_size"] is None or (whole(a["image_size"]) and a["image_size"] >= 8),
           f"--image-size must be a whole number >= 8, got {a['image_size']}")
    _check(a["lr_spread"] is None or (num(a["lr_spread"]) and a["lr_spread"] >= 1),
           f"--lr-spread must be >= 1 (1 = one learning rate for all groups), got {a['lr_spread']}")
    _check(a["amp"] in ("auto", "off", "bf16", "fp16"), f"unknown --amp '{a['amp']}'; use auto, off, bf16 or fp16")


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


def _stratified_take(idx: np.ndarray, labels: np.ndarray, n_take: int, seed: int) -> tuple:
    """Split ``idx`` into (rest, taken) with ``n_take`` taken, stratified when every class allows it."""
    from sklearn.model_selection import train_test_split

    try:
        rest, taken = train_test_split(idx, test_size=n_take, stratify=labels, random_state=seed)
    except ValueError:  # a class too small to stratify
        rest, taken = train_test_split(idx, test_size=n_take, random_state=seed)
    return np.sort(rest), np.sort(taken)


def _split_data(ds, val_fraction: float, max_train: int | None, seed: int) -> tuple:
    tr = ds.splits["train"]
    idx = np.arange(len(tr))
    val, source = None, "none"
    if "val" in ds.splits and len(ds.splits["val"]):
        val, source = SplitData.from_split(ds.splits["val"]), "val split"
    elif val_fraction > 0:
        n_val = max(1, int(round(val_fraction * len(idx))))
        _check(len(idx) - n_val >= 1, f"the training split has {len(idx)} images, too few to hold out "
                                      f"{n_val} for validation; use --val-fraction 0 or more data")
        idx, val_idx = _stratified_take(idx, tr.labels, n_val, seed)
        val, source = SplitData.from_split(tr, val_idx), f"{val_fraction:g} of train (stratified, seed {seed})"
    if max_train is not None and len(idx) > max_train:
        _, idx = _stratified_take(idx, tr.labels[idx], max_train, seed)
    return SplitData.from_split(tr, idx), val, SplitData.from_split(ds.splits["test"]), source


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("transferlab", "torch", "torchvision", "timm", "numpy", "scikit-learn"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "unknown"
    return out


def config_key(cfg: dict) -> str:
    keyed = {k: v for k, v in cfg.items() if k not in UNKEYED}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


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


def finetune(data, backbone="lite0", mode="head", out=None, epochs=5, lr=None, weights="imagenet",
             image_size=None, batch_size=64, optimizer="adamw", weight_decay=None, warmup_epochs=None,
             label_smoothing=0.0, augment=True, patience=None, val_fraction=0.1, accumulate=1, device="auto",
             seed=0, resume=True, init_head_from=None, append_to=None, max_train=None, progress=True,
             lr_spread=None, amp="auto", num_workers=None, overwrite=False, bn_stats=None) -> dict:
    """Fine-tune ``backbone`` on ``data`` in ``mode`` and return the metrics (also in ``out/metrics.json``).

    Parameters
    ----------
    data : str or Dataset
        A data spec (``digits``, ``npz:PATH``, ``folder:PATH``, ``torchvision:NAME``).
    backbone, weights : str
        As for ``build_backbone``; ``scratch`` always uses the architecture's random initialisation.
    mode : str
        ``head``, ``last:N``, ``full`` or ``scratch``.
    out : path, optional
        Run directory (default ``runs/finetune_<data>_<backbone>_<mode>``).
    epochs : int
        Requested epochs; the cosine schedule spans exactly these.
    lr : float, optional
        Peak learning rate of the classifier; default per mode and optimizer (module docstring).
    image_size : int, optional
        Input size; default the backbone's own (224 for lite0).
    weight_decay, warmup_epochs : float, optional
        Defaults 0.01 (AdamW) / 5e-4 (SGD) and 10% of ``epochs``.
    augment : bool
        Random resized crop and horizontal flip, on the batch tensors (turn off for digits or text).
    patience : int, optional
        Stop after this many epochs without a better validation accuracy (default: never).
    val_fraction : float
        Share of train held out (stratified, seeded) when the data has no ``val`` split.
    accumulate : int
        Optimizer step every ``accumulate`` batches (effective batch ``batch_size * accumulate``).
    resume : bool
        Continue from ``out/checkpoint.pt`` when its configuration matches; False starts over and
        discards that run. A checkpoint of another configuration is refused either way.
    init_head_from : path, optional
        Directory of a trained logreg head (last layer, gap, no PCA) to start the classifier from.
    append_to : path, optional
        A sweep directory or results.csv to append a ``finetune:MODE`` row to.
    max_train : int, optional
        Use at most this many training images (stratified, seeded).
    lr_spread : float, optional
        Ratio of the classifier's learning rate to the first group's (default 100 for full, else 1).
    amp : str
        ``auto``, ``off``, ``bf16`` or ``fp16``; CUDA only.
    overwrite : bool
        Discard a run in ``out`` with another configuration (or a corrupt checkpoint).
    bn_stats : str, optional
        ``frozen`` (default for pretrained modes: BatchNorm running statistics stay fixed) or
        ``update`` (trainable groups re-estimate them; always so for ``scratch``).

    Examples
    --------
    >>> m = finetune("digits", mode="last:2", epochs=1, image_size=32, augment=False)  # doctest: +SKIP
    >>> m["test_accuracy"]                                                              # doctest: +SKIP
    """
    mode = parse_mode(mode)
    optimizer = str(optimizer).lower()
    _check_arguments(locals())
    dev = resolve_device(device)
    amp = _resolve_amp(amp, dev)
    ds = load_dataset(data, seed=seed)
    out = Path(out).expanduser() if out else Path("runs") / (
        f"finetune_{ds.short_name}_{str(backbone).split(':')[-1]}_{mode.name.replace(':', '')}")
    _prepare_out(out)
    train, val, test, val_source = _split_data(ds, val_fraction, max_train, seed)
    _check(patience is None or val is not None, "--patience needs validation data; use --val-fraction > 0")
    num_classes = len(ds.class_names)
    fm = build_finetune_model(backbone, mode, num_classes, weights, image_size or 64, seed,
                              bn_stats="update" if mode.kind == "scratch" else bn_stats)
    bb = fm.backbone
    image_size = int(image_size or bb.input_size)
    head_info = init_classifier_from_head(fm, init_head_from, fm.catalog_groups[-1]) if init_head_from else None

    lr = float(lr if lr is not None else DEFAULT_LR[mode.kind] * (SGD_LR_FACTOR if optimizer == "sgd" else 1.0))
    cfg = {"data": ds.spec, "data_fingerprint": ds.fingerprint, "backbone": bb.spec, "weights": bb.weights,
           "weights_sha256": bb.weights_sha256, "mode": mode.name, "epochs": int(epochs), "lr": lr,
           "lr_spread": float(lr_spread if lr_spread is not None else DEFAULT_LR_SPREAD[mode.kind]),
           "image_size": image_size, "batch_size": int(batch_size), "accumulate": int(accumulate),
           "optimizer": optimizer,
           "weight_decay": float(weight_decay if weight_decay is not None else DEFAULT_WEIGHT_DECAY[optimizer]),
           "warmup_epochs": float(warmup_epochs if warmup_epochs is not None else 0.1 * epochs),
           "bn_stats": fm.bn_stats, "label_smoothing": float(label_smoothing), "augment": bool(augment), "patience": patience,
           "val_fraction": float(val_fraction), "val_source": val_source, "max_train": max_train, "seed": int(seed),
           "init_head_from": head_info["dir"] if head_info else None,
           "init_head_sha256": head_info["sha256"] if head_info else None,
           "amp": amp, "channels_last": dev.type == "cuda", "device": str(dev),
           "num_workers": int(num_workers if num_workers is not None else
                              (0 if train.images is not None else min(4, os.cpu_count() or 1)))}
    key = config_key(cfg)

    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if ckpt_path.exists() and not overwrite:
        ckpt = load_checkpoint(ckpt_path)
        if ckpt["config_key"] != key:
            _refuse_other_config(out, ckpt.get("config") or {}, cfg)
        if not resume:
            ckpt = None
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

    base = _metrics_base(fm, cfg, key, ds, train, val, test, head_info, out)
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
            st["stopped"] = patience is not None and st["bad_epochs"] >= patience and epoch < epochs
            st["history"].append(row)
            st["epoch"] = epoch
            save_checkpoint(ckpt_path, {"format": CHECKPOINT_FORMAT, "config_key": key, "config": cfg,
                                        **trainer.state(), "rng": rng_state(), **st})
            write_json(out / "metrics.json", {**base, **_summary(st), "complete": False})
            if progress:
                va = "-" if acc is None else f"{acc:.4f}"
                print(f"epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}, train acc "
                      f"{row['train_accuracy']:.4f}, val acc {va}, {row['seconds']:.1f} s", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"\ninterrupted; the checkpoint after epoch {st['epoch']} is in {out}: rerun the same command "
              f"to continue", file=sys.stderr)
        raise

    if st["best_state"] is not None:
        model.load_state_dict(st["best_state"])
    test_acc = trainer.evaluate(test, "test")
    metrics = {**base, **_summary(st), "test_accuracy": test_acc, "complete": True}
    save_finetuned(out, fm, cfg, metrics)
    write_json(out / "metrics.json", metrics)
    if append_to:
        _append_result(Path(append_to).expanduser(), fm, cfg, metrics, len(train))
    return metrics


def _summary(st: dict) -> dict:
    hist = st["history"]
    secs = [h["seconds"] for h in hist]
    return {"history": hist, "epochs_run": len(hist), "best_epoch": st["best_epoch"],
            "stopped_early": bool(st["stopped"]),
            "val_accuracy": st["best_val"] if hist and hist[0]["val_accuracy"] is not None else None,
            "seconds_per_epoch": float(np.mean(secs)) if secs else None, "fit_seconds": float(np.sum(secs))}


def _metrics_base(fm, cfg, key, ds, train, val, test, head_info, out) -> dict:
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
            "init_head": head_info, "config": cfg, "config_key": key, "versions": _versions()}


def _append_result(target: Path, fm, cfg: dict, metrics: dict, n_train: int) -> None:
    path = target if target.suffix == ".csv" else target / "results.csv"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        params = json.dumps({k: cfg[k] for k in ("epochs", "lr", "lr_spread", "optimizer", "weight_decay",
                                                 "batch_size", "accumulate", "augment", "label_smoothing",
                                                 "max_train")}, sort_keys=True)
        row = {"backbone": cfg["backbone"], "weights": cfg["weights"], "layer": fm.catalog_groups[-1],
               "depth": len(fm.catalog_groups) - 1, "rel_depth": 1.0, "dim": fm.feature_dim,
               "head": f"finetune:{cfg['mode']}", "pool": "gap", "image_size": cfg["image_size"],
               "preprocessing": "none",
               "params": params, "shots": "", "repeat": 0, "seed": cfg["seed"],
               "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
               "fit_seconds": round(metrics["fit_seconds"], 3), "n_train": n_train, "cache_file": ""}
        same = [r for r in read_rows(path) if row_key(r) == row_key(row) and r.get("params") == params]
        if not same:
            append_row(path, row)
            refresh_report(path.parent)
    except OSError as exc:
        raise UserInputError(f"cannot append to {path} ({exc.strerror or exc.__class__.__name__}); "
                             f"give a writable sweep directory or .csv as --append-to") from None
