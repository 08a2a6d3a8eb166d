"""Distributed extraction: ``torchrun -m transferlab extract ...`` shards the data by rank into one cache file.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`transferlab.features.extract` hands its job to
:func:`extract_sharded` on every rank. Rank 0 plans under the cache file's lock; each rank computes
whole batches of the single-process run (dealt by :func:`shard_rows`) through the same engine
(:mod:`features.engine`), so its rows are bit-equal to the single-process rows, into its own part
file ``<cache file>.rank<R>of<W>.part`` (the cache layout; ``ids`` hold each row's position in the
full split); rank 0 then merges the parts in row order. Process group: ``gloo`` on CPU, ``nccl`` on
CUDA, control messages through ``gloo``; the features travel through files, so on several nodes
the cache directory must be shared storage. Scaling and the multi-node command: ``docs/scaling.md``.

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
  the merged file (twice the plan); a write that still fails stops every rank with one line, and
  the file it was writing (a part or the cache file) is kept when sound, resumable as above, or
  moved aside when not (:func:`features.cache.after_write_failure`, as in one process).
- *Concurrency.* Rank 0 holds the cache file's lock from the plan to the merge; other ranks write
  only after rank 0 has broadcast the plan, i.e. under that lock.
- *Leftovers.* Whichever run completes the cache file (this merge, or a single-process ``extract``
  resuming a killed torchrun run) removes the parts whose layers are all finished in it
  (:func:`features.engine.remove_finished_parts`); ``cache ls`` lists parts, ``cache rm --all``
  removes them.
"""
from __future__ import annotations

import math
import os
from contextlib import ExitStack, nullcontext
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from transferlab.util import UserInputError, sha256_json

from . import cache as fcache
from . import engine
from .backbones import resolve_device
from .cache import part_path
from .data import Split
from .engine import ExtractionJob
from .spec import storage_dtype

__all__ = ["world", "is_distributed", "shard_rows", "part_path", "backend_for", "extract_sharded", "plan_work",
           "extract_part", "merge_parts"]

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


def _part_key(key: str, rank: int, world_size: int, batch_size: int) -> str:
    return sha256_json({"cache_key": key, "rank": rank, "world": world_size, "batch_size": batch_size})


def _shard(split: Split, rows: np.ndarray) -> Split:
    """The rows of one rank as a Split whose ids are the rows' positions in the full split."""
    if split.in_memory:
        return Split(split.name, split.labels[rows], images=split.images[rows], ids=rows)
    return Split(split.name, split.labels[rows], paths=[split.paths[i] for i in rows], ids=rows)


def _device(device: "str | torch.device", local_rank: int) -> torch.device:
    dev = resolve_device(device) if isinstance(device, str) else device
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


def extract_sharded(job: ExtractionJob) -> Path:
    """Run on every torchrun rank: extract this rank's rows into its part, rank 0 merges; returns the cache path.

    ``job`` is the single-process job :func:`features.extraction.extract` has resolved; each rank
    runs its shard of it (:func:`extract_part`) through the same engine.
    """
    rank, size, local_rank = world()
    job = replace(job, device=_device(job.device, local_rank))
    created, ctrl = _init_group(job.device)
    try:
        return _run(job, rank, size, ctrl)
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


def _run(job: ExtractionJob, rank: int, size: int, ctrl) -> Path:
    path = job.path
    if rank != 0:
        job = replace(job, progress=False)
    say = job.log if rank == 0 else (lambda msg: None)
    with fcache.locked(path, notify=say) if rank == 0 else nullcontext():
        todo, err = None, None
        if rank == 0:
            try:
                todo = plan_work(job, size)
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
            extract_part(job, todo, rank, size)
        except UserInputError as exc:
            err = str(exc)
        _raise_first_error(err, size, ctrl)
        err = None
        if rank == 0:
            try:
                merge_parts(job, todo, size)
            except UserInputError as exc:
                err = str(exc)
        _raise_first_error(err, size, ctrl)
    return path


def plan_work(job: ExtractionJob, size: int) -> dict:
    """Rank 0: the splits x layers still to compute; stale parts of other world sizes removed; disk checked."""
    todo = engine.work_list(job, fcache.read_status(job.path))
    for stale in fcache.parts_of(job.path):
        if not stale.name.endswith(f"of{size}{fcache.PART_SUFFIX}"):
            job.log(f"removing {stale.name}: a part of a run with another number of ranks")
            stale.unlink(missing_ok=True)
    if todo:
        engine.check_disk(job, todo, copies=2, note=f"\n  distributed over {size} ranks; parts "
                                                     f"{job.path.name}.rank*of{size}{fcache.PART_SUFFIX}")
    return todo


def extract_part(job: ExtractionJob, todo: dict, rank: int, size: int) -> None:
    """Compute this rank's rows of ``todo`` into its part file (resumed from the part's own ``n_done``)."""
    rows = {s: shard_rows(len(job.dataset.splits[s]), job.batch_size, rank, size) for s in todo}
    todo = {s: names for s, names in todo.items() if rows[s].size}
    if not todo:  # more ranks than batches
        return
    part = part_path(job.path, rank, size)
    pkey = _part_key(job.key, rank, size, job.batch_size)
    st = fcache.read_status(part) if part.exists() else None
    if part.exists() and (st is None or st["attrs"].get("key") != pkey):
        part.unlink()  # a part of another run: scratch, never merged
    elif st is not None:
        done = {s: min((ls["n_done"] for ls in st["splits"].get(s, {}).get("layers", {}).values()), default=0)
                for s in todo}
        job.log(f"note: rank {rank}/{size}: resuming part at rows {done}")
    shards = replace(job.dataset, splits={s: _shard(job.dataset.splits[s], rows[s]) for s in todo})
    engine.compute(replace(job, path=part, key=pkey, dataset=shards), todo)


def merge_parts(job: ExtractionJob, todo: dict, size: int, block_bytes: int = 64 << 20) -> Path:
    """Rank 0: copy the ranks' rows into the cache file in row order, then delete the parts.

    Refuses (UserInputError) parts that are incomplete or whose indices miss or repeat a row.
    """
    path, key, batch_size = job.path, job.key, job.batch_size
    info = {i.name: i for i in job.wanted}
    parts = {r: part_path(path, r, size) for r in range(size)}
    dtype = storage_dtype(job.spec.dtype)
    with engine.writing(job) as writer:
        for s, names in todo.items():
            split = job.dataset.splits[s]
            n = len(split)
            owners = [r for r in range(size) if shard_rows(n, batch_size, r, size).size]
            start = writer.prepare(split, [info[x] for x in names])
            if start >= n:
                writer.finish(s, names)
                continue
            for r in owners:
                if not parts[r].exists():
                    raise UserInputError(f"part file {parts[r]} is missing; rerun the same torchrun command to "
                                         f"compute it")
                st = fcache.read_status(parts[r])
                if st is None or st["attrs"].get("key") != _part_key(key, r, size, batch_size):
                    raise UserInputError(f"part file {parts[r]} belongs to another run (data, spec, ranks or batch "
                                         f"size); delete it and rerun the same torchrun command")
            with ExitStack() as stack:
                opened = [stack.enter_context(fcache.open_layers(parts[r], s, names)) for r in owners]
                seen = np.sort(np.concatenate([ids for ids, _ in opened]))
                if seen.shape != (n,) or not np.array_equal(seen, np.arange(n)):
                    raise UserInputError(f"the part files of {path.name} do not cover split {s!r} exactly once "
                                         f"({seen.size} rows for {n}); delete {path.name}.rank*{fcache.PART_SUFFIX} "
                                         f"and run again")
                row_bytes = sum(info[x].dim for x in names) * dtype.itemsize
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
    job.log(f"merged {size} parts into {path}")
    engine.remove_finished_parts(path)
    return path
