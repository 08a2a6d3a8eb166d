"""File locks shared by the stages: one writer at a time, readers alongside each other, waits that say so.

Both kinds lock the same ``<something>.lock`` file with ``flock`` (released by the kernel when the
process dies, so a kill -9 never leaves a stale lock): :func:`exclusive` through filelock's
``FileLock``, :func:`shared` with ``fcntl.flock(LOCK_SH)``, which waits for an exclusive holder and
keeps one out. The lock file itself is empty and never removed while in use; it carries no data, so
it needs no integrity rule beyond existing.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from transferlab.util import UserInputError


@contextmanager
def exclusive(lock_path: "str | Path", timeout: float = -1, notify=None, waiting: str = ""):
    """Hold ``lock_path`` exclusively; when another process holds it, ``notify(waiting)`` once and wait."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if notify and waiting:
            notify(waiting)
        lock.acquire(timeout=timeout)
    try:
        yield
    finally:
        lock.release()


def read_wait() -> float:
    """Seconds a reader waits for a writer (``$TRANSFERLAB_LOCK_WAIT``; default -1: as long as it takes)."""
    try:
        return float(os.environ.get("TRANSFERLAB_LOCK_WAIT", "-1"))
    except ValueError:
        return -1.0


@contextmanager
def shared(lock_path: "str | Path", what: str, wait: float | None = None, notify=None):
    """Hold ``lock_path`` shared while reading ``what``; wait, saying so, while a writer holds it.

    After ``wait`` seconds (default :func:`read_wait`) a UserInputError says ``what`` is being written
    by another process. Where no lock can be taken (no ``fcntl``, a read-only folder without a lock
    file) the block runs without one.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no shared flock
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except OSError:
            yield
            return
    wait = read_wait() if wait is None else wait
    notify = notify or (lambda msg: print(msg, file=sys.stderr))
    try:
        t0, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if 0 <= wait <= time.monotonic() - t0:
                    raise UserInputError(f"{what} is being written by another process (`transferlab extract`); "
                                         "wait for it to finish, then rerun") from None
                if not told:
                    notify(f"waiting: {Path(what).name} is being written by another process ...")
                    told = True
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the flock
