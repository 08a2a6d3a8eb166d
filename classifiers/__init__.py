"""Heads on cached features: registry, preprocessing, selection protocol, fast solver, persistence.

Data flows in from ``transferlab.features`` (the HDF5 cache, read through
:mod:`transferlab.features.cache`) and out to ``transferlab.pipeline``; nothing here needs a backbone.
The names are loaded on first use (as in :mod:`transferlab`), so importing the package imports no torch.
"""
from __future__ import annotations

from transferlab.util import lazy_names

# public name -> submodule that defines it
_API = {name: f".{module}" for module, names in {
    "fast_logreg": ("BatchedLogisticRegressionCV", "LogRegPath", "TorchLogisticRegression", "fit_logreg_path"),
    "heads": ("HeadSpec", "adapt_to_data", "available_heads", "default_grid", "default_preprocessing", "make_head",
              "register_head"),
    "multilayer": ("MULTI_HEAD", "MultiLayerLogisticRegression"),
    "persistence": ("head_layers", "load_head", "read_head_meta", "save_head"),
    "preprocessing": ("PREPROCESSING", "describe_preprocessing", "make_preprocessing"),
    "similarity": ("cka_matrix", "layer_similarity", "linear_cka"),
    "protocol": ("HeadResult", "sample_shots", "select_and_fit", "stratified_holdout"),
    "train": ("train_head", "train_layers", "train_multilayer"),
}.items() for name in names}

__all__ = list(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
