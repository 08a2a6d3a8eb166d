"""Image files that attack the decoder, built at test time: decompression bombs."""
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageFile

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
