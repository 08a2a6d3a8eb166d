"""File locks shared by the stages: one writer at a time, readers alongside each other, waits that say so.

Both kinds lock the same ``<something>.lock`` file with ``flock`` (released by the kernel when the
process dies, so a kill -9 never leaves a stale lock): :func:`exclusive` through filelock's
``FileLock``, :func:`shared` with ``fcntl.flock(LOCK_SH)``, which waits for an exclusive holder and
keeps one out. The lock file itself is empty and carries no data, so it needs no integrity rule
beyond existing; a cache's lock file is never removed.

A results folder's lock (:func:`exclusive_folder`) is removed again by a run that wrote nothing, so a
refused run leaves the folder as it found it. Rule: the file goes only when this process created it,
still holds it, and the folder's other entries are those it found on taking the lock (same names,
inodes, sizes and times). Removing a lock file is racy in general: a second process may have opened
the file and be waiting for it, then lock an inode no path names, while a third creates a new file
and locks that. So every holder of such a lock checks, once it holds the lock, that the path still
names the file it locked, and else starts over on the file the path names now. Every process taking a
results folder's lock goes through :func:`exclusive_folder` (an older TransferLab, taking it with
plain ``flock``, could share it with one that found the file removed).
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


def _snapshot(folder: Path, skip: str) -> dict:
    """The folder's entries but ``skip``: name -> (inode, size, modification time)."""
    found = {}
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name != skip:
                st = e.stat(follow_symlinks=False)
                found[e.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _lock_named(path: Path, notify, waiting: str) -> tuple[int, bool]:
    """``(fd, created)``: ``path`` locked exclusively, and whether this process created the file.

    Once the lock is held, the path must still name the locked file (its last holder may have removed
    it while this process waited on it); else the lock is dropped and taken on the file there now.
    """
    import fcntl

    told = False
    while True:
        try:
            fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            try:
                fd, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # removed between the two opens
                continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if notify and waiting and not told:
                    notify(waiting)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd, created
        os.close(fd)


@contextmanager
def exclusive_folder(folder: "str | Path", name: str = ".transferlab.lock", notify=None, waiting: str = ""):
    """Hold ``folder/name`` exclusively (waiting, saying ``waiting`` once, while another process holds it);
    on leaving, remove it when this process created it and the folder is otherwise as it was found (the
    module docstring gives the rule). Without ``fcntl`` this is :func:`exclusive` and the file stays."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # Windows
        with exclusive(Path(folder) / name, notify=notify, waiting=waiting):
            yield
        return
    folder = Path(folder)
    fd, created = _lock_named(folder / name, notify, waiting)
    try:
        found = _snapshot(folder, name) if created else None
        yield
    finally:
        try:
            if created and _snapshot(folder, name) == found:
                os.unlink(folder / name)  # still held: a waiter on this file sees it gone and starts over
        except OSError:
            pass  # the folder went or cannot be read: the file stays, which is always safe
        finally:
            os.close(fd)  # closing releases the flock
