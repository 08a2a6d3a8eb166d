"""Extraction: one forward pass over every split, all requested layers at once, into the cache.

Forward hooks on the requested modules pool each layer's output as soon as it is computed (the
full activation maps are never kept), and a hook on the deepest requested layer stops the forward
pass there, so asking for early layers costs only the early part of the network. Rows are written
to HDF5 as batches finish; see :mod:`features.cache` for the crash-safety rules.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from . import cache as fcache
from .backbones import Backbone, build_backbone, resolve_device
from .data import Dataset, default_data_root, load_dataset
from .errors import UserInputError
from .layers import LayerInfo, catalog, default_layers, resolve_names
from .pooling import Pooling, parse_pooling
from .preprocess import ImageFiles, interpolation_mode, normalize_batch, to_rgb_uint8


class _StopForward(Exception):
    pass


class FeatureTap:
    """Hooks that pool the outputs of named modules; stops the forward after the deepest one."""

    def __init__(self, model: torch.nn.Module, layers: list[str], pooling: Pooling, stop_after: str | None = None):
        mods = dict(model.named_modules())
        self.model, self.pooling, self.out = model, pooling, {}
        self.handles = [mods[n].register_forward_hook(self._hook(n, n == stop_after)) for n in layers]

    def _hook(self, name, stop):
        def hook(_m, _i, output):
            if name not in self.out and isinstance(output, torch.Tensor):
                self.out[name] = self.pooling(output.float())
            if stop:
                raise _StopForward
        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.out = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        return self.out

    def close(self):
        for h in self.handles:
            h.remove()


def versions() -> dict:
    import timm
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "h5py": h5py.__version__, "numpy": np.__version__}


def default_cache_dir() -> Path:
    return default_data_root() / "cache"


def _autocast(device: torch.device):
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _batches(split, start: int, batch_size: int, bb: Backbone, image_size: int, device, num_workers: int):
    """Yield normalised float (B,3,S,S) tensors on ``device`` from row ``start`` on."""
    pin = device.type == "cuda"
    if split.in_memory:
        for s in range(start, len(split), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(split.images[s:s + batch_size]))).permute(0, 3, 1, 2)
            if pin:
                x = x.pin_memory()
            yield normalize_batch(x.to(device, non_blocking=pin), image_size, bb.mean, bb.std, bb.interpolation)
        return
    ds = ImageFiles(split.paths[start:], image_size, bb.mean, bb.std, bb.interpolation)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=pin, persistent_workers=False)
    try:
        for x in loader:
            yield x.to(device, non_blocking=pin)
    except UserInputError as exc:  # raised in a worker: keep the one-line message
        raise UserInputError(str(exc).strip().splitlines()[-1].split("UserInputError: ")[-1]) from None


def plan(dataset: Dataset, infos: list[LayerInfo], todo: dict[str, list[str]]) -> tuple[str, int]:
    by_name = {i.name: i for i in infos}
    total = sum(len(dataset.splits[s]) * sum(by_name[l].bytes_per_image for l in ls) for s, ls in todo.items())
    lines = [f"  {i.depth:>2}  {i.name:<16} {i.channels:>5} ch  stride {i.stride:>3}  dim {i.dim:>6}  "
             f"{i.bytes_per_image:>7} B/img" for i in infos]
    n = {s: len(dataset.splits[s]) for s in todo}
    head = f"plan: {len(infos)} layers, splits {n}, {total / 1e6:.1f} MB to write"
    return "\n".join([head] + lines), total


def extract(data, backbone="lite0", layers="all", pool="gap", image_size: int | None = None,
            dtype: str = "float16", weights: str = "imagenet", seed: int = 0, cache_dir=None,
            batch_size: int = 64, device: str = "auto", num_workers: int | None = None,
            progress: bool = True, log=None, on_batch=None) -> Path:
    """Extract pooled features of many layers into the HDF5 cache and return the file's path.

    Parameters
    ----------
    data : str or Dataset
        A data spec (``digits``, ``npz:PATH``, ``folder:PATH``, ``torchvision:NAME``).
    backbone : str or Backbone
        ``lite0``, ``timm:NAME``, ``torchvision:NAME`` (built with ``weights`` and ``seed``).
    layers : ``"all"``, comma-separated string or list of module paths.
    pool : ``gap``, ``gmp``, ``gap+gmp`` or ``grid:K``.
    image_size : int, optional
        Side of the square input; default the backbone's own input size.
    dtype : ``float16`` or ``float32`` (storage).
    on_batch : callable(split, n_done), optional
        Called after each batch is committed (used by tests to interrupt a run).

    Returns
    -------
    Path of the cache file. A second call with the same inputs is a cache hit that writes nothing;
    asking for more layers later computes only the missing ones, in one pass.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if dtype not in ("float16", "float32"):
        raise UserInputError(f"unknown dtype '{dtype}'; use float16 or float32")
    if image_size is not None and int(image_size) <= 0:
        raise UserInputError(f"image size {image_size} must be a positive number of pixels, e.g. --image-size 64")
    if int(batch_size) <= 0:
        raise UserInputError(f"batch size {batch_size} must be positive")
    pooling = parse_pooling(pool)
    dataset = load_dataset(data, seed=seed)
    bb = build_backbone(backbone, weights=weights, seed=seed)
    size = int(image_size or bb.input_size)
    # one probe over the default catalog plus what was asked for: depth is the position in that
    # forward order, so a layer has the same depth whichever others are requested with it
    requested = resolve_names(bb.model, layers)
    union = list(dict.fromkeys(default_layers(bb.model) + requested))
    wanted = [i for i in catalog(bb.model, union, pooling, size, dtype) if i.name in set(requested)]
    meta = {"format_version": fcache.FORMAT_VERSION, "data": dataset.spec, "data_name": dataset.short_name,
            "data_fingerprint": dataset.fingerprint, "backbone": bb.spec, "arch": bb.arch, "weights": bb.weights,
            "weights_sha256": bb.weights_sha256, "image_size": size, "resize": f"antialias-{interpolation_mode(bb.interpolation)}",
            "mean": list(bb.mean), "std": list(bb.std), "pooling": pooling.name, "dtype": dtype, "seed": seed}
    key = fcache.compute_key(meta)
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cdir / fcache.file_name(meta, key)
    names = [i.name for i in wanted]
    if fcache.is_complete(fcache.read_status(path), dataset.splits, names):
        log(f"cache hit: {path}")
        return path
    try:
        cdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create cache directory {cdir} ({exc.strerror}); pass --cache-dir DIR") from None
    with fcache.locked(path, notify=log):
        return _extract_locked(path, key, meta, dataset, bb, wanted, pooling, size, dtype, batch_size,
                               device, num_workers, progress, log, on_batch, class_names=dataset.class_names)


def _open_for_write(path: Path, key: str, meta: dict, class_names, log) -> tuple[h5py.File, bool]:
    created = not path.exists()
    if not created:
        st = fcache.read_status(path)
        if st is None or st["attrs"].get("key") != key:
            moved = fcache.quarantine(path)
            log(f"warning: {path.name} could not be read back (or has another key); moved it to {moved.name} and starting afresh")
            created = True
    f = h5py.File(path, "a")
    if created:
        for k, v in meta.items():
            f.attrs[k] = v
        f.attrs["key"] = key
        f.attrs["class_names"] = json.dumps(list(class_names))
        f.attrs["versions"] = json.dumps(versions())
        f.flush()
    return f, created


def _extract_locked(path, key, meta, dataset, bb, wanted, pooling, size, dtype, batch_size, device,
                    num_workers, progress, log, on_batch, class_names):
    status = fcache.read_status(path)
    if fcache.is_complete(status, dataset.splits, [i.name for i in wanted]):
        log(f"cache hit (written by another process): {path}")
        return path
    todo = {}
    for s in dataset.splits:
        st = (status or {}).get("splits", {}).get(s, {"layers": {}})
        todo[s] = [i.name for i in wanted if not st["layers"].get(i.name, {}).get("complete", False)]
    todo = {s: ls for s, ls in todo.items() if ls}
    text, total = plan(dataset, wanted, todo)
    log(text)
    free = shutil.disk_usage(path.parent).free
    if total * 1.05 + (1 << 20) > free:
        raise UserInputError(f"the plan needs {total / 1e6:.1f} MB but {path.parent} has {free / 1e6:.1f} MB free; "
                             f"free space, pick fewer layers, gap pooling or --dtype float16")
    dev = resolve_device(device)
    model = bb.model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    f, created = _open_for_write(path, key, meta, class_names, log)
    info = {i.name: i for i in wanted}
    try:
        with f:
            for split, layer_names in todo.items():
                _extract_split(f, dataset.splits[split], [info[n] for n in layer_names], model, pooling, size,
                               dtype, batch_size, dev, workers, progress, bb, on_batch)
    except UserInputError:
        if created:
            path.unlink(missing_ok=True)
        raise
    finally:
        bb.model.to("cpu")
    return path


def _extract_split(f, split, infos, model, pooling, size, dtype, batch_size, dev, workers, progress, bb, on_batch):
    n = len(split)
    grp = f.require_group(split.name)
    if "labels" not in grp:
        grp.create_dataset("labels", data=split.labels, fletcher32=True)
        grp.create_dataset("ids", data=split.ids, fletcher32=True)
        grp.attrs.update({"n_total": n, "n_done": 0, "complete": False})
    elif grp["labels"].shape != (n,) or not np.array_equal(grp["labels"][()], split.labels):
        raise UserInputError(f"{f.filename}:{split.name} holds other labels than the data set; rm the file and extract again")
    feats = grp.require_group("features")
    for i in infos:
        if i.name not in feats:
            rows = int(max(1, min(n, (1 << 20) // (i.dim * (2 if dtype == "float16" else 4)))))
            ds = feats.create_dataset(i.name, shape=(n, i.dim), maxshape=(None, i.dim), dtype=dtype,
                                      chunks=(rows, i.dim), fletcher32=True)
            ds.attrs.update({"depth": i.depth, "raw_shape": list(i.raw_shape), "pooling": pooling.name,
                             "n_done": 0, "complete": False})
    grp.attrs["complete"] = False
    # rows already committed for every needed layer; batches stay aligned to the first run's
    start = min(int(feats[i.name].attrs["n_done"]) for i in infos)
    start -= start % batch_size if start < n else 0
    f.flush()
    names = [i.name for i in infos]
    deepest = names[-1]
    tap = FeatureTap(model, names, pooling, stop_after=deepest)
    bar = tqdm(total=n, initial=start, unit="img", desc=f"extract {split.name}", disable=not progress,
               dynamic_ncols=True, leave=False)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    try:
        done = start
        with torch.inference_mode(), _autocast(dev):
            for x in _batches(split, start, batch_size, bb, size, dev, workers):
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                out = tap(x)
                end = done + x.shape[0]
                for name in names:
                    feats[name][done:end] = out[name].float().cpu().numpy().astype(np_dtype)
                f.flush()  # rows on disk before n_done says so
                for name in names:
                    feats[name].attrs["n_done"] = end
                grp.attrs["n_done"] = min(int(d.attrs["n_done"]) for d in feats.values())
                f.flush()
                bar.update(end - done)
                done = end
                if on_batch is not None:
                    on_batch(split.name, done)
    finally:
        tap.close()
        bar.close()
    for name in names:
        feats[name].attrs["complete"] = True
    f.flush()
    grp.attrs["n_done"] = n
    grp.attrs["complete"] = all(bool(d.attrs["complete"]) for d in feats.values())
    f.flush()
