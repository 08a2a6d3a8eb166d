"""Extraction: ``extract`` resolves a request into an :class:`~features.engine.ExtractionJob` and runs it.

It finds finished work first (the memo, :mod:`features.memo`, then the cache file's own status), builds
the backbone, probes the layer catalog and checks the memory, then hands the job to the engine
(:mod:`features.engine`): in this process under the cache file's lock, or sharded over the ranks
under torchrun (:mod:`features.distributed`). Rule: the cache file is written only by the engine,
under :mod:`features.cache`'s integrity rule; a cache hit writes nothing.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from transferlab.util import UserInputError

from . import cache as fcache
from . import distributed
from .backbones import Backbone, build_backbone, resolve_device
from .data import default_cache_dir, load_dataset
from .decode import decoder_for
from .engine import PROBE_SIZE, ExtractionJob, FeatureTap, check_memory, extract_locked
from .layers import catalog, default_layers, resolve_names
from .memo import cached_extraction, write_memo
from .spec import ExtractionSpec, parse_image_size, resolve_image_size

__all__ = ["extract", "FeatureTap"]  # FeatureTap lives in features.tap; kept importable from here


def extract(data, backbone="lite0", layers="all", pool="gap", image_size: "int | str | None" = "auto",
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
    image_size : int or ``"auto"``
        Side of the square input: ``auto`` (default) the data's median shorter side within 64 px..the
        backbone's own, resolved and logged in one line; 0 = the backbone's own (see :mod:`features.spec`).
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
    if int(batch_size) <= 0:
        raise UserInputError(f"batch size {batch_size} must be positive")
    if num_workers is not None and int(num_workers) < 0:
        raise UserInputError(f"--workers {num_workers} must be 0 or more (0 decodes images in the main process)")
    if spec is None:  # every field checked before the data is read; the size is then resolved from the data
        request = parse_image_size(image_size)
        spec = ExtractionSpec(backbone if isinstance(backbone, str) else backbone.spec, weights, seed, None, pool,
                              dtype)
        dataset = load_dataset(data, seed=spec.seed)
        size = resolve_image_size(request, dataset, spec.backbone)
        log(size.line())
        spec = replace(spec, image_size=size.size)
    else:
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
    try:
        status = fcache.read_status(path)
    except UserInputError:  # held by another process: decided again under the lock
        status = None
    if fcache.is_complete(status, dataset.splits, [i.name for i in wanted]):
        log(f"cache hit: {path}")
    else:
        dev = resolve_device(device)
        job = ExtractionJob(path, key, spec, dataset, bb, wanted, axis, int(batch_size), dev,
                            workers=num_workers if num_workers is not None else min(4, os.cpu_count() or 1),
                            decode=decoder_for(dataset, decode, dev), progress=progress, log=log, on_batch=on_batch)
        check_memory(infos, wanted, spec.image_size, job.batch_size, dev)
        try:
            cdir.mkdir(parents=True, exist_ok=True)
            # under torchrun every rank computes its shard and rank 0 takes the lock (features.distributed)
            lock = nullcontext() if distributed.is_distributed() else fcache.locked(path, notify=log)
            lock.__enter__()
        except OSError as exc:
            raise UserInputError(f"cannot write to the cache directory {cdir} ({exc.strerror or exc}); "
                                 f"pass --cache-dir DIR with a writable DIR") from None
        try:
            path = distributed.extract_sharded(job) if distributed.is_distributed() else extract_locked(job)
        finally:
            lock.__exit__(None, None, None)
    if not isinstance(backbone, Backbone) and distributed.world()[0] == 0:  # under torchrun rank 0 writes the memo
        write_memo(cdir, request, spec, axis)
    return path
