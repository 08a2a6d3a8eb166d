"""Images to cached features: data specs, backbones, the layer catalog, pooling, the extraction spec,
extraction and the HDF5 cache (:mod:`transferlab.features.cache` owns its layout).

The names are loaded on first use (as in :mod:`transferlab`): the cache, the spec and the memo of
finished extractions import without torch, so a rerun whose features are all cached never pays for
importing it (1.3 s of a 3.9 s warm sweep).
"""
from __future__ import annotations

import importlib

from transferlab.util import UserInputError

# public name -> submodule that defines it
_API = {
    "Backbone": "backbones", "build_backbone": "backbones", "resolve_device": "backbones",
    "list_cache": "cache", "list_layers": "cache", "load_split": "cache", "read_cache_meta": "cache",
    "read_spec": "cache", "read_status": "cache", "verify": "cache",
    "Dataset": "data", "Split": "data", "default_data_root": "data", "load_dataset": "data",
    "FeatureTap": "extraction", "extract": "extraction", "default_cache_dir": "data",
    "LayerInfo": "layers", "catalog": "layers", "default_layers": "layers", "parameter_groups": "layers",
    "Pooling": "pooling", "parse_pooling": "pooling",
    "DEFAULT_IMAGE_SIZE": "spec", "ExtractionSpec": "spec",
}

__all__ = ["UserInputError", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab.features' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
