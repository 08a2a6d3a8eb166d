"""Extraction: one forward pass over every split, all requested layers at once, into the cache.

Forward hooks on the requested modules pool each layer's output as soon as it is computed (the
full activation maps are never kept), and a hook on the deepest requested layer stops the forward
pass there, so asking for early layers costs only the early part of the network. Rows are queued
as batches finish and committed to HDF5 about once a second through
:class:`features.cache.CacheWriter`, which states the file's
integrity rule (also what a full disk leaves: a sound resumable file, or one moved aside; never a
file that looks finished and is not). Before any work the batch's activations are checked against
the memory available (:func:`check_memory`), so an image size that cannot fit is refused with the
numbers instead of an allocator error.

The resolved-spec memo that lets a warm rerun skip building the backbone (and importing torch)
is :mod:`features.memo`.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from transferlab.util import UserInputError

from . import cache as fcache
from .backbones import Backbone, build_backbone, resolve_device
from .data import Dataset, default_cache_dir, load_dataset
from .decode import decoder_for, device_batches
from .layers import LayerInfo, catalog, default_layers, resolve_names
from .memo import cached_extraction, write_memo
from .pooling import Pooling
from .preprocess import ImageFiles, normalize_batch, to_rgb_uint8
from .spec import ExtractionSpec


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


def _autocast(device: torch.device):
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _batches(split, start: int, batch_size: int, spec: ExtractionSpec, device, num_workers: int, decode="cpu"):
    """Yield normalised float (B,3,S,S) tensors on ``device`` from row ``start`` on."""
    pin = device.type == "cuda"
    if split.in_memory:
        for s in range(start, len(split), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(split.images[s:s + batch_size]))).permute(0, 3, 1, 2)
            if pin:
                x = x.pin_memory()
            yield normalize_batch(x.to(device, non_blocking=pin), spec.image_size, spec.mean, spec.std,
                                  spec.interpolation)
        return
    if decode == "gpu":  # workers read bytes, the device decodes (features.decode)
        loader = device_batches(split.paths[start:], batch_size, spec, device, num_workers)
    else:
        ds = ImageFiles(split.paths[start:], spec.image_size, spec.mean, spec.std, spec.interpolation)
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
            progress: bool = True, log=None, on_batch=None, spec: ExtractionSpec | None = None,
            decode: str = "auto") -> Path:
    """Extract pooled features of many layers into the HDF5 cache and return the file's path.

    Parameters
    ----------
    data : str or Dataset
        A data spec (``digits``, ``npz:PATH``, ``folder:PATH``, ``torchvision:NAME``).
    backbone : str or Backbone
        ``lite0``, ``timm:NAME``, ``torchvision:NAME`` (built with ``weights`` and ``seed``); a built
        Backbone is used as it is (its own weights and seed).
    layers : ``"all"``, comma-separated string or list of module paths.
    pool : ``gap``, ``gmp``, ``gap+gmp`` or ``grid:K``.
    image_size : int, optional
        Side of the square input: default 64 px, 0 = the backbone's own (see :mod:`features.spec`).
    dtype : ``float16`` or ``float32`` (storage).
    spec : ExtractionSpec, optional
        Everything above but data and layers in one object (then ``backbone``, ``weights``, ``seed``,
        ``pool``, ``image_size`` and ``dtype`` are ignored unless ``backbone`` is a built Backbone).
    on_batch : callable(split, n_done), optional
        Called after each commit of rows to the cache (about once a second, see
        :mod:`features.cache`; every batch when ``features.cache.COMMIT_SECONDS`` is 0), with the
        rows a kill would keep (used by tests to interrupt a run).
    decode : ``auto``, ``cpu`` or ``gpu``
        Where image files are decoded (:mod:`features.decode`); in-memory data ignores it.

    Returns
    -------
    Path of the cache file. A second call with the same inputs is a cache hit that writes nothing;
    asking for more layers later computes only the missing ones, in one pass.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if spec is None:
        spec = ExtractionSpec(backbone if isinstance(backbone, str) else backbone.spec, weights, seed, image_size,
                              pool, dtype)
    if int(batch_size) <= 0:
        raise UserInputError(f"batch size {batch_size} must be positive")
    if num_workers is not None and int(num_workers) < 0:
        raise UserInputError(f"--workers {num_workers} must be 0 or more (0 decodes images in the main process)")
    dataset = load_dataset(data, seed=spec.seed)
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    request = spec
    if not isinstance(backbone, Backbone) and (hit := cached_extraction(dataset, request, layers, cdir)) is not None:
        log(f"cache hit: {hit}")
        return hit
    bb = backbone if isinstance(backbone, Backbone) else build_backbone(spec.backbone, spec.weights, spec.seed)
    spec = spec.resolve(bb)
    # one probe over the default catalog plus what was asked for: the catalog is the depth axis
    requested = resolve_names(bb.model, layers)
    axis = default_layers(bb.model)
    if spec.image_size > PROBE_SIZE * 4:  # refuse from the memory plan before a probe at full size runs
        small = catalog(bb.model, list(dict.fromkeys(axis + requested)), spec.pool, PROBE_SIZE, spec.dtype)
        check_memory(small, [i for i in small if i.name in set(requested)], spec.image_size, int(batch_size),
                     resolve_device(device), scale=(spec.image_size / PROBE_SIZE) ** 2)
    infos = catalog(bb.model, list(dict.fromkeys(axis + requested)), spec.pool, spec.image_size, spec.dtype)
    wanted = [i for i in infos if i.name in set(requested)]
    axis = [i.name for i in infos if i.name in set(axis)]
    path, key = fcache.cache_path(cdir, spec, dataset)
    names = [i.name for i in wanted]
    try:
        status = fcache.read_status(path)
    except UserInputError:  # held by another process: decided again under the lock
        status = None
    if fcache.is_complete(status, dataset.splits, names):
        log(f"cache hit: {path}")
    else:
        path = _extract_work(path, key, spec, dataset, bb, infos, wanted, axis, cdir, batch_size, device,
                             num_workers, progress, log, on_batch, decode)
    if not isinstance(backbone, Backbone) and not _is_worker_rank():
        write_memo(cdir, request, spec, axis)
    return path


def _is_worker_rank() -> bool:
    """Under torchrun, only rank 0 writes the memo (one writer per file)."""
    from .distributed import world

    return world()[0] != 0


def _extract_work(path, key, spec, dataset, bb, infos, wanted, axis, cdir, batch_size, device, num_workers,
                  progress, log, on_batch, decode) -> Path:
    """Compute what the cache lacks: checks first, then sharded under torchrun or locked in one process."""
    decode = decoder_for(dataset, decode, resolve_device(device))
    check_memory(infos, wanted, spec.image_size, int(batch_size), resolve_device(device))
    from . import distributed

    if distributed.is_distributed():  # under torchrun: every rank its shard, rank 0 merges (features.distributed)
        try:
            cdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserInputError(f"cannot write to the cache directory {cdir} ({exc.strerror or exc}); "
                                 f"pass --cache-dir DIR with a writable DIR") from None
        return distributed.extract_sharded(path, key, spec, dataset, bb, wanted, axis, batch_size, device,
                                           num_workers, progress, log, on_batch, decode)
    try:
        cdir.mkdir(parents=True, exist_ok=True)
        lock = fcache.locked(path, notify=log)
        lock.__enter__()
    except OSError as exc:
        raise UserInputError(f"cannot write to the cache directory {cdir} ({exc.strerror or exc}); "
                             f"pass --cache-dir DIR with a writable DIR") from None
    try:
        return _extract_locked(path, key, spec, dataset, bb, wanted, axis, batch_size, device, num_workers,
                               progress, log, on_batch, decode)
    finally:
        lock.__exit__(None, None, None)


def _available_memory(device: torch.device) -> int | None:
    """Bytes the batch may use: free GPU memory on CUDA, ``MemAvailable`` on Linux; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


PROBE_SIZE = 64


def check_memory(infos: list[LayerInfo], wanted: list[LayerInfo], image_size: int, batch_size: int,
                 device: torch.device, scale: float = 1.0) -> None:
    """Refuse a batch whose activations cannot fit, before any work (a lower bound, never a false refusal).

    A forward pass holds at least the float32 input batch and, at some layer, that layer's input and
    output together; the largest raw output among the layers up to the deepest requested one, twice,
    is a lower bound on the peak (MBConv blocks expand channels inside, so the real peak is higher).
    ``scale`` multiplies the raw sizes when ``infos`` were probed at a smaller input.
    """
    avail = _available_memory(device)
    deepest = max(i.depth for i in wanted)
    raw = max(int(np.prod(i.raw_shape)) for i in infos if i.depth <= deepest) * scale  # scale: probed smaller
    act_bytes = 2 if device.type == "cuda" else 4  # autocast runs bf16/fp16 activations on CUDA
    need = batch_size * (4 * 3 * image_size * image_size + act_bytes * 2 * raw)
    if avail is not None and need > avail:
        raise UserInputError(
            f"--image-size {image_size} with --batch-size {batch_size} needs at least {need / 2**30:.1f} GiB for "
            f"activations but {device.type} has {avail / 2**30:.1f} GiB available; lower --batch-size "
            f"(or --image-size)")


def _extract_locked(path, key, spec, dataset, bb, wanted, axis, batch_size, device, num_workers, progress, log,
                    on_batch, decode="cpu"):
    status = fcache.read_status(path)
    if fcache.is_complete(status, dataset.splits, [i.name for i in wanted]):
        log(f"cache hit (written by another process): {path}")
        return path
    todo = {}
    for s in dataset.splits:
        st = (status or {}).get("splits", {}).get(s)
        todo[s] = [i.name for i in wanted if not fcache.layer_complete(st, i.name)]
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
    info = {i.name: i for i in wanted}
    writer = None
    try:
        writer = fcache.CacheWriter(path, key, spec, dataset, axis, log=log)
        with writer:
            for split, layer_names in todo.items():
                _extract_split(writer, dataset.splits[split], [info[n] for n in layer_names], model, spec,
                               batch_size, dev, workers, progress, on_batch, decode)
    except fcache.WriteFailed as exc:  # a full disk or an I/O error: keep what is sound, move aside what is not
        raise UserInputError(fcache.after_write_failure(path, exc, log)) from None
    except UserInputError:
        if writer is not None and writer.created:
            path.unlink(missing_ok=True)
            Path(str(path) + ".writing").unlink(missing_ok=True)
        raise
    finally:
        bb.model.to("cpu")
    return path


def _extract_split(writer, split, infos, model, spec, batch_size, dev, workers, progress, on_batch, decode="cpu"):
    n = len(split)
    start = writer.prepare(split, infos)
    # batches stay aligned to the first run's
    start -= start % batch_size if start < n else 0
    names = [i.name for i in infos]
    tap = FeatureTap(model, names, spec.pool, stop_after=names[-1])
    bar = tqdm(total=n, initial=start, unit="img", desc=f"extract {split.name}", disable=not progress,
               dynamic_ncols=True, leave=False)
    np_dtype = np.float16 if spec.dtype == "float16" else np.float32
    committed = start
    try:
        done = start
        with torch.inference_mode(), _autocast(dev):
            for x in _batches(split, start, batch_size, spec, dev, workers, decode):
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                out = tap(x)
                rows = {name: out[name].float().cpu().numpy().astype(np_dtype) for name in names}
                now = writer.write(split.name, done, rows)
                bar.update(x.shape[0])
                done += x.shape[0]
                if on_batch is not None and now != committed:
                    on_batch(split.name, now)
                committed = now
    finally:
        tap.close()
        bar.close()
    writer.finish(split.name, names)
    if on_batch is not None and done != committed:
        on_batch(split.name, done)
