"""Torch's intra-op thread count for a block of work, set back after it."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def torch_threads(n: int | None):
    """Run the block with torch on ``n`` intra-op threads (None: unchanged), then restore the caller's count.

    OpenMP's count is each thread's own, so this changes only the calling thread's."""
    import torch

    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield previous
    finally:
        torch.set_num_threads(previous)
