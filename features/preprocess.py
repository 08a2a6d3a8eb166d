"""Preprocessing: uint8 images to the backbone's normalised input tensors.

Every image becomes 3 channels (grey is repeated, alpha dropped), is resized to ``image_size`` x
``image_size`` with an antialiased resize using the weights' own interpolation, and is normalised
with the weights' own mean and std. In-memory images are resized as whole batches on the compute
device; image files are decoded by PIL and resized with the same arithmetic in DataLoader workers.

Decoding an image file (:func:`read_image`, the one decoder of extraction, fine-tuning and predict):
the file's header is read first and an image of more than :func:`max_pixels` pixels is refused
before anything decodes it (default :data:`DEFAULT_MAX_PIXELS`, environment variable
``TRANSFERLAB_MAX_PIXELS``); the image is then turned upright by its EXIF orientation tag (what
``exif_transpose`` in :mod:`features.spec` records).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from transferlab.util import UserInputError

from .spec import interpolation_mode

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


def normalize_batch(x: torch.Tensor, image_size: int, mean, std, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 (N,3,H,W) tensor -> float (N,3,S,S), resized (antialiased) and normalised."""
    x = x.float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode=interpolation_mode(interpolation),
                          antialias=True, align_corners=False)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


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


def preprocess_image(image: np.ndarray, image_size: int, mean, std, interpolation: str = "bicubic") -> torch.Tensor:
    """(H,W[,C]) uint8 -> normalised float (3,S,S): the same arithmetic as a batch of in-memory images."""
    x = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(image[None])[0])).permute(2, 0, 1)[None]
    return normalize_batch(x, image_size, mean, std, interpolation)[0]


def worker_batches(loader):
    """Iterate a DataLoader over :class:`ImageFiles`: a file refused in a worker process stays a one-line
    UserInputError (torch re-raises it with the worker's traceback in its message)."""
    try:
        yield from loader
    except UserInputError as exc:
        raise UserInputError(str(exc).strip().splitlines()[-1].split("UserInputError: ")[-1]) from None


class ImageFiles(torch.utils.data.Dataset):
    """Image files as normalised float (3,S,S) tensors, decoded and resized in DataLoader workers.

    Resizing uses the same torch antialiased interpolation as in-memory arrays, so an image gives
    the same features whether it came from an ``npz`` archive or from a PNG file.
    """

    def __init__(self, paths, image_size: int, mean, std, interpolation: str = "bicubic", exif_transpose: bool = True):
        self.paths = list(paths)
        self.args = (image_size, tuple(mean), tuple(std), interpolation)
        self.exif_transpose = exif_transpose

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return preprocess_image(read_image(self.paths[i], self.exif_transpose), *self.args)
