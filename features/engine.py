"""The extraction engine: one forward pass per split, all requested layers at once, into one cache-layout file.

Both ways of running an extraction drive this code with an :class:`ExtractionJob`:
:func:`features.extraction.extract` in one process (the job's file is the cache file) and
:func:`features.distributed.extract_sharded` under torchrun (each rank's job is its shard of the
batches, written into its part file). The tap, the batching, the storage dtype and the commits are
this one code for both, so a rank's rows are bit-equal to the single-process rows of the same batches.

Rule: the job's file is written only through :class:`features.cache.CacheWriter` (its integrity
rule is :mod:`features.cache`'s; the part files' is :mod:`features.distributed`'s); what is
computed is exactly the layers the file lacks, once :func:`check_memory` (run by ``extract`` before
it builds the job) and :func:`check_disk` have passed the plan. When a run completes the cache file,
the part files whose rows it now holds are removed (:func:`remove_finished_parts`).
"""
from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from transferlab.util import UserInputError

from . import cache as fcache
from .backbones import Backbone
from .data import Dataset
from .decode import device_batches
from .layers import LayerInfo
from .preprocess import ImageFiles, normalize_batch, to_rgb_uint8
from .spec import ExtractionSpec, storage_dtype
from .tap import FeatureTap

PROBE_SIZE = 64  # image side of the catalog's probe when the real size would not fit (see check_memory)
ESTIMATE_NOTE_SECONDS = 60  # an extraction whose first batches predict a longer run says so in one note


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass(frozen=True)
class ExtractionJob:
    """Everything one extraction run needs, resolved: what to compute, where to write it, how to run.

    Parameters
    ----------
    path, key : the file written (the cache file, or a rank's part file) and its key.
    spec : the resolved :class:`features.spec.ExtractionSpec`.
    dataset : the splits to compute (a rank's job holds its shard of each split).
    backbone : the built :class:`features.backbones.Backbone`.
    wanted : :class:`features.layers.LayerInfo` of the requested layers, in forward order.
    axis : the backbone's default catalog names (the depth axis stored in the file).
    batch_size, device, workers : batch rows, resolved ``torch.device``, image-decoding workers.
    decode : ``cpu`` or ``gpu``, resolved by :func:`features.decode.decoder_for`.
    progress, log, on_batch : progress bar, message sink, ``on_batch(split, n_done)`` after each commit.
    """

    path: Path
    key: str
    spec: ExtractionSpec
    dataset: Dataset
    backbone: Backbone
    wanted: tuple[LayerInfo, ...]
    axis: tuple[str, ...]
    batch_size: int
    device: torch.device
    workers: int
    decode: str = "cpu"
    progress: bool = True
    log: Callable[[str], None] = _stderr
    on_batch: Callable[[str, int], None] | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "wanted", tuple(self.wanted))
        object.__setattr__(self, "axis", tuple(self.axis))
        object.__setattr__(self, "batch_size", int(self.batch_size))


# --- the batches (the tap: features.tap) ----------------------------------------------------------

def _autocast(device: torch.device):
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def batches(split, start: int, batch_size: int, spec: ExtractionSpec, device, num_workers: int, decode="cpu"):
    """Yield normalised float (B,3,S,S) tensors on ``device`` from row ``start`` on."""
    pin = device.type == "cuda"
    if split.in_memory:
        for s in range(start, len(split), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(split.images[s:s + batch_size])))
            x = x.permute(0, 3, 1, 2)
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


# --- the plan and the checks before any work ------------------------------------------------------

def plan(dataset: Dataset, infos: list[LayerInfo], todo: dict[str, list[str]]) -> tuple[str, int]:
    """The plan's text (one line per layer) and the bytes it writes."""
    by_name = {i.name: i for i in infos}
    total = sum(len(dataset.splits[s]) * sum(by_name[l].bytes_per_image for l in ls) for s, ls in todo.items())
    lines = [f"  {i.depth:>2}  {i.name:<16} {i.channels:>5} ch  stride {i.stride:>3}  dim {i.dim:>6}  "
             f"{i.bytes_per_image:>7} B/img" for i in infos]
    n = {s: len(dataset.splits[s]) for s in todo}
    head = f"plan: {len(infos)} layers, splits {n}, {total / 1e6:.1f} MB to write"
    return "\n".join([head] + lines), total


def work_list(job: ExtractionJob, status: dict | None) -> dict[str, list[str]]:
    """Split -> the requested layers the job's file has not finished (the cache's per-layer rule)."""
    todo = {}
    for s in job.dataset.splits:
        st = (status or {}).get("splits", {}).get(s)
        names = [i.name for i in job.wanted if not fcache.layer_complete(st, i.name)]
        if names:
            todo[s] = names
    return todo


def check_disk(job: ExtractionJob, todo: dict[str, list[str]], copies: int = 1, note: str = "") -> None:
    """Log the plan (with ``note``) and refuse it when the job's folder lacks room for ``copies`` times its bytes."""
    text, total = plan(job.dataset, list(job.wanted), todo)
    job.log(text + note)
    need = copies * total
    folder = job.path.parent
    free = shutil.disk_usage(folder).free
    if need * 1.05 + (1 << 20) > free:
        what = " (part files, then the merged file)" if copies == 2 else ""
        raise UserInputError(f"the plan needs {need / 1e6:.1f} MB{what} but {folder} has {free / 1e6:.1f} MB free; "
                             f"free space, pick fewer layers, gap pooling or --dtype float16")


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


# --- computing ------------------------------------------------------------------------------------

def estimate_note(n_images: int, image_size: int, device, seconds_per_image: float) -> str | None:
    """The note printed before a long extraction (over :data:`ESTIMATE_NOTE_SECONDS`), else None.

    >>> estimate_note(60000, 224, "cpu", 0.05)
    'note: extracting 60000 images at 224 px on cpu: about 50 min (measured on the first batches)'
    """
    total = n_images * seconds_per_image
    if total <= ESTIMATE_NOTE_SECONDS:
        return None
    about = f"{total:.0f} s" if total < 90 else f"{total / 60:.0f} min" if total < 5400 else f"{total / 3600:.1f} h"
    return (f"note: extracting {n_images} images at {image_size} px on {device}: about {about} "
            f"(measured on the first batches)")


@contextmanager
def writing(job: ExtractionJob):
    """The job's file open in a :class:`features.cache.CacheWriter`, its failures turned into one line.

    A full disk or an I/O error keeps what is sound and moves aside what is not
    (:func:`features.cache.after_write_failure`); bad input in a file this writer created removes
    it, so nothing half-written that looks finished is left.
    """
    writer = None
    try:
        writer = fcache.CacheWriter(job.path, job.key, job.spec, job.dataset, list(job.axis), log=job.log)
        with writer:
            yield writer
    except fcache.WriteFailed as exc:
        raise UserInputError(fcache.after_write_failure(job.path, exc, job.log)) from None
    except UserInputError:
        if writer is not None and writer.created:
            job.path.unlink(missing_ok=True)
            Path(str(job.path) + ".writing").unlink(missing_ok=True)
        raise


def compute(job: ExtractionJob, todo: dict[str, list[str]]) -> None:
    """Compute ``todo`` (split -> layer names) into the job's file, resuming each split from its ``n_done``."""
    info = {i.name: i for i in job.wanted}
    model = job.backbone.model.to(job.device).eval()
    if job.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pending = [sum(len(job.dataset.splits[s]) for s in todo)]  # rows left at most (a resumed split has fewer)

    def measured(rows: int, seconds: float) -> None:  # the run's first measured batch predicts the rest
        if pending:
            note = estimate_note(pending.pop(), job.spec.image_size, job.device, seconds / max(rows, 1))
            if note:
                with tqdm.external_write_mode(file=sys.stderr):
                    job.log(note)

    try:
        with writing(job) as writer:
            for split, names in todo.items():
                extract_split(writer, job, job.dataset.splits[split], [info[n] for n in names], model, measured)
    finally:
        job.backbone.model.to("cpu")


def extract_split(writer, job: ExtractionJob, split, infos: list[LayerInfo], model: torch.nn.Module,
                  measured: Callable[[int, float], None] | None = None) -> None:
    """Run the batches of one split through the tap and queue their rows in ``writer``; finish the split.
    ``measured(rows, seconds)`` hears how long the second batch took: the first one also pays for starting
    up (workers, the device's warm-up), which would inflate an estimate."""
    n, batch_size, dev = len(split), job.batch_size, job.device
    start = writer.prepare(split, infos)
    # batches stay aligned to the first run's
    start -= start % batch_size if start < n else 0
    names = [i.name for i in infos]
    tap = FeatureTap(model, names, job.spec.pool, stop_after=names[-1])
    bar = tqdm(total=n, initial=start, unit="img", desc=f"extract {split.name}", disable=not job.progress,
               dynamic_ncols=True, leave=False)
    dtype = storage_dtype(job.spec.dtype)
    on_batch = job.on_batch
    committed = start
    try:
        done = start
        n_batches, first_end = 0, 0.0
        with torch.inference_mode(), _autocast(dev):
            for x in batches(split, start, batch_size, job.spec, dev, job.workers, job.decode):
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                out = tap(x)
                rows = {name: out[name].float().cpu().numpy().astype(dtype) for name in names}
                now = writer.write(split.name, done, rows)
                bar.update(x.shape[0])
                n_batches += 1
                if n_batches == 1:
                    first_end = time.perf_counter()
                elif n_batches == 2 and measured is not None:
                    measured(x.shape[0], time.perf_counter() - first_end)
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


def remove_finished_parts(path: Path) -> list[Path]:
    """Remove the part files of ``path`` whose every layer is finished in it; return those removed.

    Called by whoever completed the cache file, holding its lock (no rank writes a part then).
    A part that cannot be read holds nothing to merge and goes too; one still holding a layer the
    cache file lacks stays for the torchrun run that will merge it (``cache rm --all`` removes it).
    """
    status = fcache.read_status(path)
    removed = []
    for part in fcache.parts_of(path):
        try:
            st = fcache.read_status(part)
        except UserInputError:  # held open by another process: not ours to remove now
            continue
        held = {} if st is None else {s: list(v["layers"]) for s, v in st["splits"].items()}
        if st is None or all(fcache.is_complete(status, [s], names) for s, names in held.items()):
            part.unlink(missing_ok=True)
            Path(str(part) + ".writing").unlink(missing_ok=True)
            removed.append(part)
    return removed


def extract_locked(job: ExtractionJob) -> Path:
    """One process, holding the cache file's lock: plan what the file lacks, check the disk, compute it."""
    todo = work_list(job, fcache.read_status(job.path))
    if not todo:
        job.log(f"cache hit (written by another process): {job.path}")
        return job.path
    check_disk(job, todo)
    compute(job, todo)
    removed = remove_finished_parts(job.path)
    if removed:
        job.log(f"note: removed {len(removed)} part file(s) a torchrun run left; {job.path.name} holds their rows")
    return job.path
