"""Preprocessing: uint8 images to the backbone's normalised input tensors.

Every image becomes 3 channels (grey is repeated, alpha dropped), is resized to ``image_size`` x
``image_size`` with an antialiased resize using the weights' own interpolation, and is normalised
with the weights' own mean and std. In-memory images are resized as whole batches on the compute
device; image files are decoded by PIL and resized with the same arithmetic in DataLoader workers.

Decoding an image file is :mod:`features.images` (no torch: the report's thumbnails use it too), whose
names this module re-exports.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.util import UserInputError

from .images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_pixels, open_image, read_image, to_rgb_uint8
from .spec import interpolation_mode

__all__ = ["DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV", "max_pixels", "open_image", "read_image", "to_rgb_uint8",
           "normalize_batch", "preprocess_image", "worker_batches", "ImageFiles"]

def normalize_batch(x: torch.Tensor, image_size: int, mean, std, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 (N,3,H,W) tensor -> float (N,3,S,S), resized (antialiased) and normalised."""
    x = x.float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode=interpolation_mode(interpolation),
                          antialias=True, align_corners=False)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


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
