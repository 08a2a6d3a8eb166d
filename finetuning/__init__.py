"""End-to-end fine-tuning: a stage of its own, beside the cached-feature heads.

It sits between ``classifiers`` and ``pipeline`` in the import direction: it uses ``features``
(backbones, data, preprocessing, the layer catalog for ``last:N`` groups) and ``classifiers`` (a
trained head to start the classifier from); ``pipeline`` uses it (CLI, and appending a fine-tuning
row to a sweep). Nothing here knows the sweep's files.

The names are loaded on first use: the configuration (:mod:`finetuning.config`, which the CLI reads
for its flags) imports without torch.
"""
from __future__ import annotations

import importlib

_API = {"FinetuneConfig": "config", "Mode": "config", "parse_mode": "config", "finetune": "run",
        "load_finetuned": "saved", "predict_finetuned": "saved"}

__all__ = list(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'transferlab.finetuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
