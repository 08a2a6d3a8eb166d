"""Where image files are decoded: ``--decode cpu`` (PIL in DataLoader workers) or ``gpu`` (on the device).

At ImageNet scale the backbone is not the wall on a GPU, JPEG decode is: one CPU core decodes
a few hundred full-size JPEGs a second while a current GPU runs ResNet-50 at thousands of images a
second (``docs/scaling.md`` has the numbers). With ``--decode gpu`` the DataLoader workers read each
file's header (an image over the pixel limit is refused there, :func:`features.preprocess.open_image`)
and then only the file's bytes; each batch of JPEGs is decoded in one call of :func:`torchvision.io.decode_jpeg`
on the CUDA device (nvJPEG), then resized and normalised there with the same arithmetic as every
other input (:func:`features.preprocess.normalize_batch`, one image at a time, since the files'
sizes differ). Files that are not JPEG (PNG, ...) are decoded by torchvision on the CPU in the same
batch. ``auto`` (the default) picks ``gpu`` for folder data on a CUDA device, ``cpu`` otherwise;
in-memory data (``npz:``, ``digits``) is already decoded and ignores the setting.

The decoder is not part of the cache key: nvJPEG and libjpeg may round a few pixels differently,
so features from the two decoders agree to within that rounding, not bit for bit.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from transferlab.util import UserInputError

from .preprocess import normalize_batch, open_image

DECODES = ("auto", "cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8\xff"


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
    """The raw bytes of image files as uint8 tensors (what a DataLoader worker does for ``--decode gpu``)."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from torchvision.io import read_file

        with open_image(self.paths[i]):  # the header only: refused here when over the pixel limit
            pass
        try:
            return read_file(str(self.paths[i]))
        except (OSError, RuntimeError):
            raise UserInputError(f"image {self.paths[i]} cannot be read; remove or replace the file") from None


def decode_batch(encoded: list, device: torch.device) -> list:
    """Decode a list of encoded images into (3,H,W) uint8 tensors on ``device``: JPEGs in one batched call there."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if bytes(data[:3].tolist()) == _JPEG_MAGIC]
    try:
        if jpegs:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, img in zip(jpegs, decoded):
                out[i] = img
        for i, data in enumerate(encoded):
            if out[i] is None:
                out[i] = decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as exc:
        raise UserInputError(f"cannot decode an image of this batch ({exc}); `--decode cpu` names the file") from None
    return out


def device_batches(paths, batch_size: int, spec, device: torch.device, num_workers: int):
    """Yield normalised float (B,3,S,S) tensors on ``device`` for image files, decoded on the device."""
    loader = DataLoader(EncodedFiles(paths), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=list, pin_memory=False)
    for encoded in loader:
        images = decode_batch(encoded, device)
        yield torch.cat([normalize_batch(img[None], spec.image_size, spec.mean, spec.std, spec.interpolation)
                         for img in images])
