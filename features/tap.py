"""The feature tap: forward hooks that pool the outputs of named modules, and stop the forward after the
deepest one. Its own module (torch and the pooling only) so that ``predict`` applies a saved head without
importing the extraction engine and the HDF5 cache behind it (``tests/pipeline/test_first_line.py``)."""
from __future__ import annotations

import torch

from .pooling import Pooling


class _StopForward(Exception):
    pass


class FeatureTap:
    """Hooks that pool the outputs of named modules; stops the forward after the deepest one."""

    def __init__(self, model: torch.nn.Module, layers: list[str], pooling: Pooling, stop_after: str | None = None):
        mods = dict(model.named_modules())
        self.model, self.pooling, self.out = model, pooling, {}
        self.handles = [mods[n].register_forward_hook(self._hook(n, n == stop_after)) for n in layers]

    def _hook(self, name, stop):
        def hook(_m, _i, output):
            if name not in self.out and isinstance(output, torch.Tensor):
                self.out[name] = self.pooling(output.float())
            if stop:
                raise _StopForward
        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.out = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        return self.out

    def close(self):
        for h in self.handles:
            h.remove()
