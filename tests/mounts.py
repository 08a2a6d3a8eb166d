"""Size-limited and read-only tmpfs mounts for the full-disk and bad-input tests (root only)."""
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(where: Path, options: str) -> str | None:
    """Mount a tmpfs at ``where``; the reason it could not be mounted, or None."""
    where.mkdir(parents=True, exist_ok=True)
    if os.name != "posix" or os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root on Linux"
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount is not available ({exc})"
    return None if out.returncode == 0 else f"this machine does not allow mounting a tmpfs ({out.stderr.strip()})"


@contextmanager
def tmpfs(where: Path, options: str):
    """A tmpfs at ``where`` for the ``with`` block; skips the test with the reason when it cannot be mounted."""
    reason = _mount(where, options)
    if reason:
        pytest.skip(reason)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=20)


def fill(folder: Path, name: str = "filler") -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler file (delete it to free space)."""
    path = Path(folder) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return path
