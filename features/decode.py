"""Where image files are decoded: ``--decode cpu`` (PIL in DataLoader workers) or ``gpu`` (on the device).

At ImageNet scale the backbone is not the wall on a GPU, JPEG decode is: one CPU core decodes
full-size JPEGs far more slowly than a current GPU runs ResNet-50 over them (``docs/scaling.md``
has the numbers). With ``--decode gpu`` the DataLoader workers read each
file's header (an image over the pixel limit is refused there, :func:`features.preprocess.open_image`)
and then only the bytes of upright JPEGs; each batch of those is decoded in one call of
:func:`torchvision.io.decode_jpeg` on the CUDA device (nvJPEG), then resized and normalised there with
the same arithmetic as every other input (:func:`features.preprocess.normalize_batch`, one image at a
time, since the files' sizes differ). nvJPEG does not apply EXIF orientation, so a JPEG whose EXIF
tag turns it, and every file that is not JPEG (PNG, ...), is decoded in the worker by
:func:`features.preprocess.read_image`, the CPU path's own decoder. ``auto`` (the default) picks
``gpu`` for folder data on a CUDA device, ``cpu`` otherwise; in-memory data (``npz:``, ``digits``)
is already decoded and ignores the setting.

The decoder is not part of the cache key: nvJPEG and libjpeg may round a few pixels differently,
so features from the two decoders agree to within that rounding, not bit for bit.
"""
from __future__ import annotations

import torch
from PIL import ExifTags
from torch.utils.data import DataLoader

from transferlab.util import UserInputError

from .preprocess import normalize_batch, open_image, read_image

DECODES = ("auto", "cpu", "gpu")
_JPEG_FORMATS = ("JPEG", "MPO")  # PIL's names: MPO is a JPEG with more pictures after the first (phones)


def resolve_decode(decode: str | None, device: torch.device) -> str:
    """``auto``/None -> ``gpu`` on a CUDA device, else ``cpu``; ``gpu`` off CUDA is refused."""
    decode = (decode or "auto").lower()
    if decode not in DECODES:
        raise UserInputError(f"unknown --decode {decode!r}; use auto, cpu or gpu")
    if decode == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    if decode == "gpu" and device.type != "cuda":
        raise UserInputError(f"--decode gpu needs a CUDA device but extraction runs on {device}; "
                             f"use --decode cpu (or auto) or --device cuda")
    return decode


def decoder_for(dataset, decode: str | None, device: torch.device) -> str:
    """``cpu`` or ``gpu`` for this data set on this device (in-memory data needs no decoding: ``cpu``)."""
    if all(s.in_memory for s in dataset.splits.values()):
        return "cpu"
    return resolve_decode(decode, device)


class EncodedFiles(torch.utils.data.Dataset):
    """What a DataLoader worker does for ``--decode gpu``: an upright JPEG's bytes (1-D uint8 tensor, for
    the device to decode), any other image decoded here by :func:`read_image` ((3,H,W) uint8 tensor)."""

    def __init__(self, paths, exif_transpose: bool = True):
        self.paths = list(paths)
        self.exif_transpose = exif_transpose

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.io import read_file

        path = self.paths[i]
        with open_image(path) as im:  # the header: size checked, EXIF orientation of a JPEG read
            jpeg = im.format in _JPEG_FORMATS
            turned = jpeg and self.exif_transpose and im.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)
        if not jpeg or turned:
            return torch.from_numpy(read_image(path, self.exif_transpose)).permute(2, 0, 1)
        try:
            return read_file(str(path))
        except (OSError, RuntimeError):
            raise UserInputError(f"image {path} cannot be read; remove or replace the file") from None


def decode_batch(items: list, device: torch.device) -> list:
    """:class:`EncodedFiles` items as (3,H,W) uint8 tensors on ``device``: the JPEGs' bytes decoded in one
    batched call there, the images decoded in the workers moved there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = [None if t.ndim == 1 else t.to(device) for t in items]
    jpegs = [i for i, t in enumerate(items) if t.ndim == 1]
    if jpegs:
        try:
            decoded = decode_jpeg([items[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            raise UserInputError(f"cannot decode a JPEG of this batch ({exc}); `--decode cpu` names the file") from None
        for i, img in zip(jpegs, decoded):
            out[i] = img
    return out


def device_batches(paths, batch_size: int, spec, device: torch.device, num_workers: int):
    """Yield normalised float (B,3,S,S) tensors on ``device`` for image files, decoded on the device."""
    loader = DataLoader(EncodedFiles(paths, spec.exif_transpose), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=list, pin_memory=False)
    for encoded in loader:
        images = decode_batch(encoded, device)
        yield torch.cat([normalize_batch(img[None], spec.image_size, spec.mean, spec.std, spec.interpolation)
                         for img in images])
