"""End-to-end fine-tuning: a stage of its own, beside the cached-feature heads.

It sits between ``classifiers`` and ``pipeline`` in the import direction: it uses ``features``
(backbones, data, preprocessing, the layer catalog for ``last:N`` groups) and ``classifiers`` (a
trained head to start the classifier from); ``pipeline`` uses it (CLI, and appending a fine-tuning
row to a sweep). Nothing here knows the sweep's files.

The names are loaded on first use: the configuration (:mod:`finetuning.config`, which the CLI reads
for its flags) imports without torch.
"""
from __future__ import annotations

from transferlab.util import lazy_names

_API = {"FinetuneConfig": ".config", "Mode": ".config", "parse_mode": ".config", "finetune": ".run",
        "load_finetuned": ".saved", "predict_finetuned": ".saved"}

__all__ = list(_API)
__getattr__, __dir__ = lazy_names(__name__, _API)
