"""Image files to uint8 RGB: high bit depths are scaled, never clipped to white."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from transferlab.features.preprocess import read_image
from transferlab.util import UserInputError


def _png16_rgb(path, arr):
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    grey = np.random.default_rng(0).integers(0, 65536, (20, 24)).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # PIL's 16-bit grey mode
    img = read_image(tmp_path / "g16.png")
    expected = np.round(grey / 257.0).astype(np.uint8)  # 65535 -> 255, linear
    assert img.shape == (20, 24, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], expected) and np.array_equal(img[..., 2], expected)
    assert img.mean() < 200  # clipping made it all 255


def test_a_16_bit_rgb_png_keeps_its_colours(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    img = read_image(_png16_rgb(tmp_path / "rgb16.png", rgb))
    assert np.abs(img.astype(int) - np.round(rgb / 257.0)).max() <= 1  # PIL keeps the high byte


def test_an_8_bit_png_is_unchanged(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb8.png")
    assert np.array_equal(read_image(tmp_path / "rgb8.png"), rgb)


def test_floating_point_pixels_are_refused_by_name(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(UserInputError, match=r"f\.tif holds floating-point pixels"):
        read_image(tmp_path / "f.tif")
