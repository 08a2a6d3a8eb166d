"""Pooling: turn a layer's (N, C, H, W) activations into fixed-length (N, D) rows.

``gap``      mean over H, W                              D = C
``gmp``      max over H, W                               D = C
``gap+gmp``  both, concatenated                          D = 2C
``grid:K``   adaptive average pooling to K x K, flattened  D = C*K*K (channel-major)

All are resolution-independent: the dimension depends only on the channels. Activations that are
already flat (N, D) pass through unchanged; (N, L, C) token maps are treated as C channels over L.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from transferlab.util import UserInputError

if TYPE_CHECKING:
    import torch

VALID = "gap, gmp, gap+gmp or grid:K (K >= 1)"


@dataclass(frozen=True)
class Pooling:
    kind: str  # gap | gmp | gap+gmp | grid
    k: int = 1

    @property
    def name(self) -> str:
        return f"grid:{self.k}" if self.kind == "grid" else self.kind

    def dim(self, channels: int, flat: bool = False) -> int:
        if flat:
            return channels
        return {"gap": channels, "gmp": channels, "gap+gmp": 2 * channels}.get(self.kind, channels * self.k * self.k)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch  # here, not at the top: parsing a pooling spec (the cache, the memo) needs no torch

        if x.ndim == 2:
            return x
        if x.ndim == 3:  # (N, L, C) tokens -> (N, C, L, 1)
            x = x.transpose(1, 2).unsqueeze(-1)
        if x.ndim != 4:
            raise ValueError(f"cannot pool activations of shape {tuple(x.shape)}")
        if self.kind == "gap":
            return x.mean(dim=(2, 3))
        if self.kind == "gmp":
            return x.amax(dim=(2, 3))
        if self.kind == "gap+gmp":
            return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return torch.nn.functional.adaptive_avg_pool2d(x, self.k).flatten(1)


def parse_pooling(spec: "str | Pooling") -> Pooling:
    if isinstance(spec, Pooling):
        return spec
    s = str(spec).strip().lower()
    if s in ("gap", "gmp", "gap+gmp"):
        return Pooling(s)
    if s.startswith("grid:"):
        try:
            k = int(s[5:])
        except ValueError:
            k = 0
        if k >= 1:
            return Pooling("grid", k)
    raise UserInputError(f"unknown pooling '{spec}'; use {VALID}")
