"""Preprocessing: uint8 images to the backbone's normalised input tensors.

Every image becomes 3 channels (grey is repeated, alpha dropped), is resized to ``image_size`` x
``image_size`` with an antialiased resize using the weights' own interpolation, and is normalised
with the weights' own mean and std. In-memory images are resized as whole batches on the compute
device; image files are decoded and resized by PIL in DataLoader workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserInputError


def to_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """(N,H,W), (N,H,W,1), (N,H,W,3) or (N,H,W,4) uint8 -> (N,H,W,3) uint8."""
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        images = images[..., :3]
    return images


def interpolation_mode(name: str) -> str:
    return "bicubic" if str(name).lower() == "bicubic" else "bilinear"


def normalize_batch(x: torch.Tensor, image_size: int, mean, std, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 (N,3,H,W) tensor -> float (N,3,S,S), resized (antialiased) and normalised."""
    x = x.float().div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode=interpolation_mode(interpolation),
                          antialias=True, align_corners=False)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def load_image_file(path: "str | Path", image_size: int, interpolation: str = "bicubic") -> np.ndarray:
    """Read one image file as (S,S,3) uint8, resized with PIL's antialiasing filter."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            resample = Image.Resampling.BICUBIC if interpolation_mode(interpolation) == "bicubic" else Image.Resampling.BILINEAR
            im = im.resize((image_size, image_size), resample=resample)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserInputError(f"image {path} does not exist") from None
    except Exception as exc:
        raise UserInputError(f"cannot read image {path} ({exc.__class__.__name__}); remove or replace the file") from None


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded and resized to uint8 (3,S,S) tensors, for a DataLoader with workers."""

    def __init__(self, paths, image_size: int, interpolation: str = "bicubic"):
        self.paths = list(paths)
        self.image_size = image_size
        self.interpolation = interpolation

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        arr = load_image_file(self.paths[i], self.image_size, self.interpolation)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
