"""Distributed extraction: ``torchrun -m transferlab extract ...`` shards the data by rank into one cache file.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`transferlab.features.extract`
hands over to :func:`extract_sharded`, which runs on every rank:

1. Rank 0 takes the cache file's lock, reads what is already finished and broadcasts the work
   (splits x layers) to every rank, so all ranks agree on it.
2. Each split is cut into the same batches a single-process run uses (``batch_size`` rows), and the
   batches are dealt to the ranks by :class:`torch.utils.data.DistributedSampler` (no shuffle).
   The sampler pads the last round with repeated batches so every rank gets as many; the padding is
   dropped (:func:`shard_rows`), so every row is computed exactly once. Because each rank runs whole
   batches of the single-process run through the same code (:func:`features.extraction._extract_split`),
   its rows are bit-for-bit the single-process rows (a float16/float32 result can depend on which
   images share a batch; here they share the same one).
3. Each rank writes its rows into its own *part file* next to the cache file,
   ``<cache file>.rank<R>of<W>.part``, written by :class:`features.cache.CacheWriter`: it has the
   cache layout, and its ``ids`` hold each row's position in the full split (the row's index).
4. When every rank reports success, rank 0 merges the parts into the cache file in row order,
   through ``CacheWriter`` as well, checking that the parts' indices cover every row exactly once;
   then it deletes the parts. The result has the same datasets, values and attributes as a
   single-process run's file (``versions`` aside).

Process group: ``gloo`` on CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``), chosen from the
device; control messages (the work list, errors) go through a ``gloo`` group in both cases. The
features themselves travel through files, so the cache directory must be shared storage when the
ranks run on several nodes.

Integrity rule of the part files
--------------------------------
- *Complete.* A part is complete for a layer when the cache rule says so (``complete`` set last,
  ``n_done`` equal to the part's rows); rank 0 merges only complete parts and refuses parts whose
  indices do not cover the split exactly once.
- *Stale.* A part's key is the cache key with the rank, the world size and the batch size; a part
  with another key (another data set, spec, world size or batch size) is deleted, never merged.
  Parts of another world size are deleted by rank 0 before work starts.
- *Crash.* A rank killed mid-run leaves its part at its last flushed batch; the next run with the
  same world size resumes each rank from its own ``n_done`` (resume per rank). A crash during the
  merge leaves the cache file resumable by its own rule (``n_done`` per layer) and the parts in
  place; the next run's merge continues from the cache file's ``n_done``.
- *Disk full.* Rank 0 checks before any work that the cache directory has room for the parts and
  the merged file (twice the plan); a write that still fails leaves both resumable as above.
- *Concurrency.* Rank 0 holds the cache file's lock from the plan to the merge; other ranks write
  only after rank 0 has broadcast the plan, i.e. under that lock.
"""
from __future__ import annotations

import math
import os
import shutil
from contextlib import ExitStack, nullcontext
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from transferlab.util import UserInputError, sha256_json

from . import cache as fcache
from .backbones import resolve_device
from .data import Dataset, Split
from .decode import decoder_for

PART_SUFFIX = ".part"
# collectives wait this long for the slowest rank (rank 0's merge of a large file included)
TIMEOUT = timedelta(hours=float(os.environ.get("TRANSFERLAB_DIST_TIMEOUT_HOURS", "6")))


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """Whether this process is one of several ranks launched by torchrun."""
    return world()[1] > 1


def shard_rows(n: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """Row positions of one rank: whole batches of a single-process run, dealt by DistributedSampler.

    Every row of ``range(n)`` appears on exactly one rank, in increasing order on each.

    Examples
    --------
    >>> shard_rows(10, 3, 1, 2).tolist()   # batches [0,3) [3,6) [6,9) [9,10): rank 1 gets the 2nd and 4th
    [3, 4, 5, 9]
    """
    from torch.utils.data import DistributedSampler

    n_batches = math.ceil(n / batch_size) if n else 0
    if n_batches == 0:
        return np.zeros(0, dtype=np.int64)
    sampler = DistributedSampler(range(n_batches), num_replicas=world_size, rank=rank, shuffle=False,
                                 drop_last=False)
    # the sampler's k-th batch for this rank sits at position rank + k*world in its padded list;
    # positions past n_batches repeat the first batches (padding) and are dropped
    kept = [b for k, b in enumerate(sampler) if rank + k * world_size < n_batches]
    rows = [np.arange(b * batch_size, min(n, (b + 1) * batch_size), dtype=np.int64) for b in kept]
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def part_path(path: Path, rank: int, world_size: int) -> Path:
    return Path(path).with_name(f"{Path(path).name}.rank{rank}of{world_size}{PART_SUFFIX}")


def _part_key(key: str, rank: int, world_size: int, batch_size: int) -> str:
    return sha256_json({"cache_key": key, "rank": rank, "world": world_size, "batch_size": batch_size})


def _shard(split: Split, rows: np.ndarray) -> Split:
    """The rows of one rank as a Split whose ids are the rows' positions in the full split."""
    if split.in_memory:
        return Split(split.name, split.labels[rows], images=split.images[rows], ids=rows)
    return Split(split.name, split.labels[rows], paths=[split.paths[i] for i in rows], ids=rows)


def _device(device: str, local_rank: int) -> torch.device:
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def backend_for(dev: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if dev.type == "cuda" else "gloo"


def _init_group(dev: torch.device):
    """Join torchrun's process group (when not joined yet); return (created, control group)."""
    created = not dist.is_initialized()
    if created:
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend_for(dev), timeout=TIMEOUT, **kw)
    ctrl = dist.new_group(backend="gloo", timeout=TIMEOUT) if dist.get_backend() != "gloo" else None
    return created, ctrl


def extract_sharded(path, key, spec, dataset: Dataset, bb, wanted, axis, batch_size: int, device: str,
                    num_workers, progress: bool, log, on_batch=None, decode: str = "auto") -> Path:
    """Run on every torchrun rank: extract this rank's rows into its part, rank 0 merges; returns the cache path.

    The arguments are those :func:`features.extraction.extract` has resolved (cache path and key,
    resolved spec, data set, built backbone, requested layers' infos, the catalog's names).
    """
    rank, size, local_rank = world()
    dev = _device(device, local_rank)
    created, ctrl = _init_group(dev)
    try:
        return _run(Path(path), key, spec, dataset, bb, wanted, axis, int(batch_size), dev, num_workers,
                    progress, log, on_batch, rank, size, ctrl, decode)
    finally:
        if created:
            dist.destroy_process_group()


def _agree(obj, rank, ctrl):
    """Rank 0's object on every rank."""
    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=ctrl)
    return box[0]


def _raise_first_error(err, size, ctrl):
    errors = [None] * size
    dist.all_gather_object(errors, err, group=ctrl)
    bad = [(r, e) for r, e in enumerate(errors) if e]
    if bad:
        r, e = bad[0]
        raise UserInputError(e if r == 0 else f"rank {r}: {e}")


def _run(path, key, spec, dataset, bb, wanted, axis, batch_size, dev, num_workers, progress, log, on_batch,
         rank, size, ctrl, decode="auto"):
    from .extraction import plan

    say = log if rank == 0 else (lambda msg: None)
    with fcache.locked(path, notify=say) if rank == 0 else nullcontext():
        todo, err = None, None
        if rank == 0:
            try:
                todo = _plan_work(path, dataset, wanted, size, say, plan)
            except UserInputError as exc:
                err = str(exc)
        work = _agree({"todo": todo, "error": err}, rank, ctrl)
        if work["error"]:
            raise UserInputError(work["error"])
        todo = work["todo"]
        if not todo:
            say(f"cache hit (written by another process): {path}")
            return path
        err = None
        try:
            _extract_part(path, key, spec, dataset, bb, wanted, axis, todo, batch_size, dev, num_workers,
                          progress and rank == 0, log, on_batch, rank, size, decode)
        except UserInputError as exc:
            err = str(exc)
        _raise_first_error(err, size, ctrl)
        err = None
        if rank == 0:
            try:
                merge_parts(path, key, spec, dataset, wanted, axis, todo, batch_size, size, log=say)
            except UserInputError as exc:
                err = str(exc)
        _raise_first_error(err, size, ctrl)
    return path


def _plan_work(path, dataset, wanted, size, say, plan) -> dict:
    """Rank 0: the splits x layers still to compute; stale parts of other world sizes removed; disk checked."""
    status = fcache.read_status(path)
    todo = {}
    for s in dataset.splits:
        st = (status or {}).get("splits", {}).get(s)
        names = [i.name for i in wanted if not fcache.layer_complete(st, i.name)]
        if names:
            todo[s] = names
    for stale in path.parent.glob(f"{path.name}.rank*of*{PART_SUFFIX}"):
        if not stale.name.endswith(f"of{size}{PART_SUFFIX}"):
            say(f"removing {stale.name}: a part of a run with another number of ranks")
            stale.unlink(missing_ok=True)
    if todo:
        text, total = plan(dataset, wanted, todo)
        say(f"{text}\n  distributed over {size} ranks; parts {path.name}.rank*of{size}{PART_SUFFIX}")
        free = shutil.disk_usage(path.parent).free
        if 2 * total * 1.05 + (1 << 20) > free:
            raise UserInputError(f"the plan needs {2 * total / 1e6:.1f} MB (part files, then the merged file) but "
                                 f"{path.parent} has {free / 1e6:.1f} MB free; free space, pick fewer layers, "
                                 f"gap pooling or --dtype float16")
    return todo


def _extract_part(path, key, spec, dataset, bb, wanted, axis, todo, batch_size, dev, num_workers, progress, log,
                  on_batch, rank, size, decode="auto"):
    from .extraction import _extract_split

    rows = {s: shard_rows(len(dataset.splits[s]), batch_size, rank, size) for s in todo}
    todo = {s: names for s, names in todo.items() if rows[s].size}
    if not todo:  # more ranks than batches
        return
    part = part_path(path, rank, size)
    pkey = _part_key(key, rank, size, batch_size)
    st = fcache.read_status(part) if part.exists() else None
    if part.exists() and (st is None or st["attrs"].get("key") != pkey):
        part.unlink()  # a part of another run: scratch, never merged
    elif st is not None:
        done = {s: min((ls["n_done"] for ls in st["splits"].get(s, {}).get("layers", {}).values()), default=0)
                for s in todo}
        log(f"note: rank {rank}/{size}: resuming part at rows {done}")
    shards = Dataset(dataset.spec, {s: _shard(dataset.splits[s], rows[s]) for s in todo}, dataset.class_names,
                     dataset.fingerprint)
    model = bb.model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    workers = num_workers if num_workers is not None else min(4, os.cpu_count() or 1)
    decode = decoder_for(dataset, decode, dev)
    info = {i.name: i for i in wanted}
    try:
        with fcache.CacheWriter(part, pkey, spec, shards, axis, log=log) as writer:
            for s, names in todo.items():
                _extract_split(writer, shards.splits[s], [info[n] for n in names], model, spec, batch_size, dev,
                               workers, progress, on_batch, decode)
    finally:
        bb.model.to("cpu")


def merge_parts(path, key, spec, dataset, wanted, axis, todo, batch_size, size, log=print,
                block_bytes: int = 64 << 20) -> Path:
    """Rank 0: copy the ranks' rows into the cache file in row order, then delete the parts.

    Refuses (UserInputError) parts that are incomplete or whose indices miss or repeat a row.
    """
    info = {i.name: i for i in wanted}
    parts = {r: part_path(path, r, size) for r in range(size)}
    with fcache.CacheWriter(path, key, spec, dataset, axis, log=log) as writer:
        for s, names in todo.items():
            split = dataset.splits[s]
            n = len(split)
            owners = [r for r in range(size) if shard_rows(n, batch_size, r, size).size]
            start = writer.prepare(split, [info[x] for x in names])
            if start >= n:
                writer.finish(s, names)
                continue
            for r in owners:
                if not parts[r].exists():
                    raise UserInputError(f"part file {parts[r]} is missing; rerun the same torchrun command to compute it")
                st = fcache.read_status(parts[r])
                if st is None or st["attrs"].get("key") != _part_key(key, r, size, batch_size):
                    raise UserInputError(f"part file {parts[r]} belongs to another run (data, spec, ranks or batch "
                                         f"size); delete it and rerun the same torchrun command")
            with ExitStack() as stack:
                opened = [stack.enter_context(fcache.open_layers(parts[r], s, names)) for r in owners]
                seen = np.sort(np.concatenate([ids for ids, _ in opened]))
                if seen.shape != (n,) or not np.array_equal(seen, np.arange(n)):
                    raise UserInputError(f"the part files of {path.name} do not cover split {s!r} exactly once "
                                         f"({seen.size} rows for {n}); delete {path.name}.rank*{PART_SUFFIX} "
                                         f"and run again")
                dtype = np.float16 if spec.dtype == "float16" else np.float32
                row_bytes = sum(info[x].dim for x in names) * np.dtype(dtype).itemsize
                step = max(batch_size, block_bytes // max(1, row_bytes))
                for lo in range(start, n, step):
                    hi = min(n, lo + step)
                    block = {x: np.empty((hi - lo, info[x].dim), dtype=dtype) for x in names}
                    for ids, layers in opened:
                        a, b = np.searchsorted(ids, [lo, hi])
                        for x in names:
                            block[x][ids[a:b] - lo] = layers[x][a:b]
                    writer.write(s, lo, block)
            writer.finish(s, names)
    log(f"merged {size} parts into {path}")
    for p in parts.values():
        p.unlink(missing_ok=True)
    return path
