"""The resolved-spec memo: a warm rerun finds its cache file without building the backbone.

Kept apart from :mod:`features.extraction` so that it imports without torch: a sweep whose
features are all cached reads the memo and the cache (h5py) and never imports torch.

Finding a cache file needs the *resolved* spec (weights sha256, mean, std, native size) and the
backbone's default catalog, which come from the built model. After every extraction (or cache hit)
the resolved spec and the catalog are written to ``<cache dir>/.specs/<memo key>.json``, the key a
SHA-256 over the requested spec (backbone, weights, seed, image size, pooling, dtype) and the
weights' identity: a weights file's absolute path, size and mtime; otherwise the versions of torch,
timm, torchvision and (lite*) the weights package. The next call with the same request reads the
memo first and returns the cache file without building the backbone when that file's stored key
equals the key computed from the memo's spec and every requested layer of every split is complete.

Integrity rule of a memo: written whole with :func:`transferlab.util.atomic_write` (a crash or a
full disk leaves the old memo or none; a failed write is ignored, the memo only saves time). It is
*stale* when the weights' identity changes (another key: never read) or when it disagrees with the
cache (key mismatch, file missing or incomplete): then it is ignored, the backbone is built as
without it, and the memo is rewritten. An unreadable or edited memo (its stored spec no longer
hashes to its stored fingerprint) is ignored the same way.
"""
from __future__ import annotations

import json
from pathlib import Path

from transferlab.util import UserInputError, library_versions, sha256_json, write_json

from . import cache as fcache
from .data import Dataset, default_cache_dir
from .spec import LITE_PACKAGES, ExtractionSpec, parse_layers

MEMO_DIR = ".specs"


def memo_key(spec: ExtractionSpec) -> str | None:
    """Key of the resolved-spec memo for an unresolved spec (None: no memo for it)."""
    if spec.weights in ("imagenet", "random"):
        dists = ("torch", "timm", "torchvision")
        if spec.backbone in LITE_PACKAGES:
            dists += (LITE_PACKAGES[spec.backbone][2],)
        identity = library_versions(dists)
    else:
        try:
            st = Path(spec.weights).expanduser().resolve().stat()
        except OSError:
            return None  # building reports the missing file
        identity = {"file": str(Path(spec.weights).expanduser().resolve()), "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns}
    request = {k: getattr(spec, k) for k in ("backbone", "weights", "seed", "image_size", "pooling", "dtype")}
    return sha256_json({"memo_format": 1, "request": request, "weights_identity": identity})


def memo_hit(cdir: Path, spec: ExtractionSpec, dataset: Dataset, layers) -> Path | None:
    """The complete cache file the memo points to, or None (no memo, stale, or work left to do)."""
    key = memo_key(spec)
    if key is None:
        return None
    try:
        memo = json.loads((cdir / MEMO_DIR / f"{key}.json").read_text())
        resolved = ExtractionSpec.from_dict(memo["spec"])
        if memo["memo_key"] != key or resolved.fingerprint() != memo["fingerprint"]:
            return None
        names = parse_layers(layers, memo["catalog"])
    except (OSError, ValueError, KeyError, TypeError, UserInputError):
        return None
    path, cache_key = fcache.cache_path(cdir, resolved, dataset)
    status = fcache.read_status(path)
    if not names or not status or status["attrs"].get("key") != cache_key:
        return None
    return path if fcache.is_complete(status, dataset.splits, names) else None


def write_memo(cdir: Path, request: ExtractionSpec, resolved: ExtractionSpec, catalog_names: list) -> None:
    key = memo_key(request)
    if key is None:
        return
    try:
        (cdir / MEMO_DIR).mkdir(parents=True, exist_ok=True)
        write_json(cdir / MEMO_DIR / f"{key}.json", {"memo_key": key, "spec": resolved.to_dict(),
                                                    "fingerprint": resolved.fingerprint(), "catalog": catalog_names})
    except OSError:
        pass  # the memo only saves time


def cached_extraction(dataset: Dataset, spec: ExtractionSpec, layers, cache_dir=None) -> Path | None:
    """The complete cache file for this request, found through the memo (no backbone, no torch);
    None when there is work to do or no usable memo: then :func:`features.extraction.extract`."""
    return memo_hit(Path(cache_dir) if cache_dir else default_cache_dir(), spec, dataset, layers)
