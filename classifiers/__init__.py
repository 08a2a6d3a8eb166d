"""Heads on cached features: registry, preprocessing, selection protocol, fast solver, persistence.

Data flows in from ``transferlab.features`` (the HDF5 cache, read through
:mod:`transferlab.features.cache`) and out to ``transferlab.pipeline``; nothing here needs a backbone.
"""

from .fast_logreg import BatchedLogisticRegressionCV, LogRegPath, TorchLogisticRegression, fit_logreg_path
from .heads import HeadSpec, adapt_to_data, available_heads, default_grid, default_preprocessing, make_head, register_head
from .persistence import load_head, read_head_meta, save_head
from .preprocessing import PREPROCESSING, describe_preprocessing, make_preprocessing
from .protocol import HeadResult, sample_shots, select_and_fit, stratified_holdout
from .train import train_head, train_layers

__all__ = [
    "BatchedLogisticRegressionCV", "HeadResult", "HeadSpec", "LogRegPath", "PREPROCESSING",
    "TorchLogisticRegression", "adapt_to_data", "available_heads", "default_grid", "default_preprocessing",
    "describe_preprocessing", "fit_logreg_path", "load_head", "make_head", "make_preprocessing",
    "read_head_meta", "register_head", "sample_shots", "save_head", "select_and_fit", "stratified_holdout",
    "train_head", "train_layers",
]
