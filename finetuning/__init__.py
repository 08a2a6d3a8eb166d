"""End-to-end fine-tuning: a stage of its own, beside the cached-feature heads.

It sits between ``classifiers`` and ``pipeline`` in the import direction: it uses ``features``
(backbones, data, preprocessing, the layer catalog for ``last:N`` groups) and ``classifiers`` (a
trained head to start the classifier from); ``pipeline`` uses it (CLI, and appending a fine-tuning
row to a sweep). Nothing here knows the sweep's files.
"""
from .config import FinetuneConfig
from .model import Mode, parse_mode
from .run import finetune
from .saved import load_finetuned, predict_finetuned

__all__ = ["FinetuneConfig", "Mode", "finetune", "load_finetuned", "parse_mode", "predict_finetuned"]
