"""Images to cached features: data specs, backbones, the layer catalog, pooling, the extraction spec,
extraction and the HDF5 cache (:mod:`transferlab.features.cache` owns its layout)."""
from transferlab.util import UserInputError

from .backbones import Backbone, build_backbone, resolve_device
from .cache import list_cache, list_layers, load_split, read_cache_meta, read_spec, read_status, verify
from .data import Dataset, Split, default_data_root, load_dataset
from .extraction import FeatureTap, default_cache_dir, extract
from .layers import LayerInfo, catalog, default_layers, parameter_groups
from .pooling import Pooling, parse_pooling
from .spec import DEFAULT_IMAGE_SIZE, ExtractionSpec

__all__ = [
    "Backbone", "build_backbone", "resolve_device", "list_cache", "list_layers", "load_split", "read_cache_meta",
    "read_spec", "read_status", "verify", "Dataset", "Split", "default_data_root", "load_dataset",
    "UserInputError", "FeatureTap", "default_cache_dir", "extract", "LayerInfo", "catalog", "default_layers",
    "parameter_groups", "Pooling", "parse_pooling", "DEFAULT_IMAGE_SIZE", "ExtractionSpec",
]
