"""Image files that attack the decoder, built at test time: EXIF-rotated photos and decompression bombs."""
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

EXIF_ORIENTATION = 0x0112


def upright(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for ``stored`` pixels (H,W,C) with this EXIF orientation (TIFF/EXIF 2.3 table)."""
    return {1: stored, 2: stored[:, ::-1], 3: stored[::-1, ::-1], 4: stored[::-1],
            5: stored.transpose(1, 0, 2), 6: np.rot90(stored, -1), 7: stored[::-1, ::-1].transpose(1, 0, 2),
            8: np.rot90(stored, 1)}[orientation]


def asymmetric(h: int = 24, w: int = 40) -> np.ndarray:
    """A (h,w,3) uint8 picture whose every turn and mirror differs: a dark left band, a bright top-right
    square, a vertical colour ramp."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([40 + yy * 150 // h, 60 + xx * 120 // w, 200 - yy * 100 // h], -1)
    img[:, : w // 4] //= 4
    img[: h // 3, -w // 3:] = 250
    return img.astype(np.uint8)


def save_tagged(path: Path, pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Save ``pixels`` with an EXIF orientation tag (JPEG or PNG by suffix); return the stored pixels as
    decoded without the tag (a JPEG rounds them)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **({"quality": 95} if path.suffix == ".jpg" else {}))
    with Image.open(path) as im:
        assert im.getexif().get(EXIF_ORIENTATION) == orientation
        return np.asarray(im.convert("RGB"))


def bomb_png(path: Path, width: int = 12000, height: int = 12000) -> Path:
    """A 1-bit black PNG of ``width`` x ``height`` pixels, a few kB on disk, written row by row (never
    held decoded)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + tag + data + (zlib.crc32(tag + data) & 0xFFFFFFFF).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_decode_of(monkeypatch):
    """``no_decode_of(path)``: decoding that file's pixels (PIL's ``ImageFile.load``) fails the test instead;
    other files decode as usual. Returns the list of such attempts."""
    attempts, guarded = [], set()
    load = ImageFile.ImageFile.load

    def guarded_load(self):
        name = getattr(self, "filename", None) or getattr(getattr(self, "fp", None), "name", None)
        if name is not None and str(Path(str(name)).resolve()) in guarded:
            attempts.append(name)
            raise AssertionError(f"decoded {name}")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded_load)

    def guard(path: Path) -> list:
        guarded.add(str(Path(path).resolve()))
        return attempts

    return guard
