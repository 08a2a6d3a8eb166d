"""Images to cached features: data specs, backbones, the layer catalog, pooling, the extraction spec,
extraction and the HDF5 cache (:mod:`transferlab.features.cache` owns its layout).

The names are loaded on first use (as in :mod:`transferlab`): the cache, the spec and the memo of
finished extractions import without torch, so a rerun whose features are all cached never pays for
importing it (what that saves: the warm-rerun row of ``bench/README.md``).
"""
from __future__ import annotations

from transferlab.util import UserInputError, lazy_names

# public name -> submodule that defines it
_API = {name: f".{module}" for module, names in {
    "backbones": ("Backbone", "build_backbone", "resolve_device"),
    "cache": ("list_cache", "list_layers", "load_split", "read_cache_meta", "read_spec", "read_status", "verify"),
    "data": ("Dataset", "Split", "default_data_root", "load_dataset", "default_cache_dir"),
    "engine": ("ExtractionJob",),
    "extraction": ("extract",),
    "layers": ("LayerInfo", "catalog", "default_layers", "parameter_groups"),
    "pooling": ("Pooling", "parse_pooling"),
    "spec": ("DEFAULT_IMAGE_SIZE", "ExtractionSpec"),
    "tap": ("FeatureTap",),
}.items() for name in names}

__all__ = ["UserInputError", *_API]
__getattr__, __dir__ = lazy_names(__name__, _API)
