"""Images to cached features: data specs, backbones, the layer catalog, pooling, extraction, cache."""
from .backbones import Backbone, build_backbone, resolve_device
from .cache import list_cache, read_status, verify
from .data import Dataset, Split, default_data_root, load_dataset
from .errors import UserInputError
from .extraction import FeatureTap, default_cache_dir, extract
from .layers import LayerInfo, catalog, default_layers, parameter_groups
from .pooling import Pooling, parse_pooling

__all__ = [
    "Backbone", "build_backbone", "resolve_device", "list_cache", "read_status", "verify", "Dataset", "Split",
    "default_data_root", "load_dataset", "UserInputError", "FeatureTap", "default_cache_dir", "extract",
    "LayerInfo", "catalog", "default_layers", "parameter_groups", "Pooling", "parse_pooling",
]
