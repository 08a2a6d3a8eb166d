"""Image files to uint8 RGB: high bit depths scaled, never clipped to white; EXIF orientation applied; size capped."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.image_files import asymmetric, bomb_png, no_decode_of, save_tagged, upright  # noqa: F401 (fixture)
from transferlab.features.preprocess import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_pixels, read_image
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


@pytest.mark.parametrize("orientation", range(1, 9))
def test_read_image_turns_every_exif_orientation_upright(tmp_path, orientation):
    """PNG keeps the stored pixels exactly: the decoded image is the table's turn of them, or the
    stored pixels themselves for a spec written before orientation was applied."""
    stored = save_tagged(tmp_path / "t.png", asymmetric(6, 10), orientation)
    assert np.array_equal(read_image(tmp_path / "t.png"), upright(stored, orientation))
    assert np.array_equal(read_image(tmp_path / "t.png", exif_transpose=False), stored)


def test_the_pixel_limit_is_read_from_the_environment_and_checked_from_the_header(tmp_path, monkeypatch,
                                                                                  no_decode_of):
    img = np.random.default_rng(3).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_pixels() == DEFAULT_MAX_PIXELS == 50_000_000
    monkeypatch.setenv(MAX_PIXELS_ENV, "600")
    assert np.array_equal(read_image(tmp_path / "i.png"), img)  # 30 x 20 = 600: at the limit
    monkeypatch.setenv(MAX_PIXELS_ENV, "599")
    attempts = no_decode_of(tmp_path / "i.png")
    with pytest.raises(UserInputError) as err:
        read_image(tmp_path / "i.png")
    assert str(err.value) == (f"image {tmp_path / 'i.png'} is 30x20 = 600 pixels, over the limit of 599; "
                              f"shrink it, or raise the limit with TRANSFERLAB_MAX_PIXELS")
    assert attempts == []
    for bad in ("lots", "0", "-5", "1e6"):
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        with pytest.raises(UserInputError, match=f"TRANSFERLAB_MAX_PIXELS='{bad}' is not a positive whole number"):
            read_image(tmp_path / "i.png")


def test_an_image_beyond_pils_own_limit_is_refused_by_name_even_with_a_raised_limit(tmp_path, monkeypatch):
    bomb = bomb_png(tmp_path / "b.png", 20000, 10000)  # 200 million pixels: PIL itself refuses above 179 million
    monkeypatch.setenv(MAX_PIXELS_ENV, "300000000")
    with pytest.raises(UserInputError, match=r"image .*b\.png has more pixels than PIL decodes"):
        read_image(bomb)
