"""Image files and arrays to (H,W,3) uint8, without torch: the one decoder of extraction, fine-tuning, predict
and the report's thumbnails (:mod:`features.preprocess` re-exports these names beside the tensor arithmetic).

Decoding an image file (:func:`read_image`): the file's header is read first and an image of more
than :func:`max_pixels` pixels is refused before anything decodes it (default
:data:`DEFAULT_MAX_PIXELS`, environment variable ``TRANSFERLAB_MAX_PIXELS``); the image is then
turned upright by its EXIF orientation tag (what ``exif_transpose`` in :mod:`features.spec` records).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from transferlab.util import UserInputError

# 50 million pixels: above the full resolution of today's cameras (48-50 MP phone and camera modes),
# below PIL's own warning (89 million); decoded as RGB and converted to float for the resize, such an
# image takes about 0.8 GB at its peak in the worker that reads it
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "TRANSFERLAB_MAX_PIXELS"


def max_pixels() -> int:
    """The most pixels (width x height) an image file may have: ``TRANSFERLAB_MAX_PIXELS``, else the default."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if limit < 1:
        raise UserInputError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels; "
                             f"unset it (default {DEFAULT_MAX_PIXELS}) or set e.g. {MAX_PIXELS_ENV}=100000000")
    return limit


def open_image(path: "str | Path") -> Image.Image:
    """Open an image file lazily (its header only) and refuse it, naming it, when it has more than
    :func:`max_pixels` pixels; use it as ``with open_image(path) as im:``."""
    limit = max_pixels()
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit: ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise UserInputError(f"image {path} does not exist") from None
    except Image.DecompressionBombError:
        raise UserInputError(f"image {path} has more pixels than PIL decodes (over {2 * Image.MAX_IMAGE_PIXELS}); "
                             f"shrink it or remove it") from None
    except Exception as exc:
        raise UserInputError(f"cannot read image {path} ({exc.__class__.__name__}); "
                             f"remove or replace the file") from None
    w, h = im.size
    if w * h > limit:
        im.close()
        raise UserInputError(f"image {path} is {w}x{h} = {w * h} pixels, over the limit of {limit}; shrink it, "
                             f"or raise the limit with {MAX_PIXELS_ENV}")
    return im


def to_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """(N,H,W), (N,H,W,1), (N,H,W,3) or (N,H,W,4) uint8 -> (N,H,W,3) uint8."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return images


# PIL modes that hold more than 8 bits per sample: convert("RGB") would clip them to white
_HIGH_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def _to_rgb(im: Image.Image, path) -> np.ndarray:
    """A PIL image as (H,W,3) uint8; 16-bit grey is scaled to 8 bits (v * 255 / 65535, rounded)."""
    if im.mode in _HIGH_DEPTH or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        top = _HIGH_DEPTH.get(im.mode, 65535)
        if im.mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise UserInputError(f"image {path} holds 32-bit integer pixels ({a.min()}..{a.max()}); save it with "
                                 f"8 or 16 bits per channel")
        g = ((a * 255 + top // 2) // top).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if im.mode == "F":
        raise UserInputError(f"image {path} holds floating-point pixels; save it with 8 or 16 bits per channel")
    return np.array(im.convert("RGB"), dtype=np.uint8)


def read_image(path: "str | Path", exif_transpose: bool = True) -> np.ndarray:
    """Read one image file at its own size as (H,W,3) uint8, upright; unreadable files name themselves.

    An image over :func:`max_pixels` pixels is refused from its header (:func:`open_image`).
    ``exif_transpose`` turns the image by its EXIF orientation tag (``PIL.ImageOps.exif_transpose``);
    false only for a spec written before that was done (:mod:`features.spec`).
    High bit depths are scaled, never clipped: 16-bit grey (PIL ``I;16``/``I``) is mapped to 0..255;
    16-bit RGB(A) PNGs are decoded by PIL to their high bytes already.
    """
    with open_image(path) as im:
        try:
            if exif_transpose:
                ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb(im, path)
        except UserInputError:
            raise
        except Exception as exc:
            raise UserInputError(f"cannot read image {path} ({exc.__class__.__name__}); "
                                 f"remove or replace the file") from None
