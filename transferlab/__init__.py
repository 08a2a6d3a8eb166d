"""TransferLab: transfer learning with pretrained CNNs, measured.

``import transferlab`` gives the public API; the stages live in sub-packages that import in one
direction only: ``transferlab.features`` (images to cached features) -> ``transferlab.classifiers``
(heads on features) -> ``transferlab.finetuning`` (end-to-end training) -> ``transferlab.pipeline``
(sweep, reports, CLI).

Examples
--------
>>> import transferlab                                                   # doctest: +SKIP
>>> path = transferlab.extract("digits", "lite0", layers="blocks.3,bn2")  # doctest: +SKIP
>>> row = transferlab.train_head(path, "blocks.3", "logreg")              # doctest: +SKIP
>>> res = transferlab.sweep(data="digits", out="runs/sweep")             # doctest: +SKIP
>>> res.rows.head()                                                        # doctest: +SKIP
>>> preds = transferlab.predict("runs/sweep", ["photos/"])  # a DataFrame  # doctest: +SKIP

The names are loaded on first use, so ``import transferlab`` alone does not import torch.
"""
from __future__ import annotations

from .util import UserInputError, lazy_names

__version__ = "0.2.0"

# public name -> module that defines it
_API = {
    "ExtractionSpec": "transferlab.features.spec",
    "DEFAULT_IMAGE_SIZE": "transferlab.features.spec",
    "build_backbone": "transferlab.features.backbones",
    "load_dataset": "transferlab.features.data",
    "catalog": "transferlab.features.layers",
    "extract": "transferlab.features.extraction",
    "read_cache_meta": "transferlab.features.cache",
    "list_layers": "transferlab.features.cache",
    "load_split": "transferlab.features.cache",
    "verify_cache": "transferlab.features.cache",
    "make_head": "transferlab.classifiers.heads",
    "train_head": "transferlab.classifiers.train",
    "train_layers": "transferlab.classifiers.train",
    "train_multilayer": "transferlab.classifiers.train",
    "cka_matrix": "transferlab.classifiers.similarity",
    "select_and_fit": "transferlab.classifiers.protocol",
    "load_head": "transferlab.classifiers.persistence",
    "FinetuneConfig": "transferlab.finetuning.config",
    "finetune": "transferlab.finetuning.run",
    "load_finetuned": "transferlab.finetuning.saved",
    "SweepConfig": "transferlab.pipeline.sweep",
    "sweep": "transferlab.pipeline.sweep",
    "SweepResult": "transferlab.pipeline.results",
    "load_results": "transferlab.pipeline.results",
    "advise": "transferlab.pipeline.advise",
    "predict": "transferlab.pipeline.predict",
}
_ALIASES = {"verify_cache": "verify"}

__all__ = ["UserInputError", "__version__", *_API]


__getattr__, __dir__ = lazy_names(__name__, _API, _ALIASES)
