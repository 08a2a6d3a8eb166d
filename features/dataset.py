"""The two types every data spec hands out: :class:`Split` (labelled images of one split) and
:class:`Dataset` (named, fingerprinted splits sharing one list of class names).

Their own module so that the loaders of :mod:`transferlab.features.data` and
:mod:`transferlab.features.folders` both build them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Split:
    """One split of a data set: either in-memory uint8 images or a list of image files."""

    name: str
    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    ids: np.ndarray = field(default=None)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.ids is None:
            self.ids = np.arange(len(self.labels), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def take(self, rows, name: str | None = None) -> "Split":
        """The split's ``rows`` (positions, in that order) as a new split, keeping their sample ids."""
        rows = np.asarray(rows, dtype=np.int64)
        kept = {"images": self.images[rows]} if self.in_memory else {"paths": [self.paths[i] for i in rows]}
        return Split(self.name if name is None else name, self.labels[rows], ids=self.ids[rows], **kept)


@dataclass
class Dataset:
    """A named, fingerprinted set of splits sharing one list of class names."""

    spec: str
    splits: dict[str, Split]
    class_names: list[str]
    fingerprint: str
    layout: str = ""
    notes: list = field(default_factory=list)

    @property
    def short_name(self) -> str:
        from transferlab.util import slug

        kind, _, rest = self.spec.partition(":")
        base = Path(rest).stem if rest else kind
        return slug(base if kind in ("npz", "folder") else (rest or kind)) or "data"
