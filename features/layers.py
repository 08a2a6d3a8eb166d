"""Layer catalog: the extractable layers of a backbone, generic (early) to specialised (late).

Naming scheme
-------------
A layer is named by its module path in the backbone as built, exactly as ``model.named_modules()``
spells it (the scheme of torchvision's ``feature_extraction``): ``blocks.3`` for EfficientNet,
``layer2`` for a ResNet, ``features.7`` for a VGG. Its features are the module's *output*, taken
after the module has run (for EfficientNet blocks: the block's output; for ResNet stages: the
stage's output). Order is the order of the forward pass, measured by one probe forward pass with
hooks, not assumed from registration order.

Depth: one definition
---------------------
The depth axis is the backbone's default catalog (below), in forward order: catalog layer ``i`` has
depth ``i`` and relative depth ``i / (n - 1)`` (0 = stem, 1 = the last catalog layer). Any other
module has the depth of the first catalog layer whose output comes at or after its own (a module
inside ``blocks.2`` has the depth of ``blocks.2``; a module after the last one, ``n``). So a layer's
depth never depends on which other layers were asked for with it. :func:`catalog` computes it, the
cache stores it per layer (``depth``, ``rel_depth``), and everything downstream reads it from there.

Default set (``--layers all``): the stem, every stage or block group, and the head's last
activation. For timm EfficientNet/MobileNet: ``bn1``, ``blocks.0`` .. ``blocks.N``, ``bn2``; for
ResNets: ``relu`` (timm: ``act1``), ``layer1`` .. ``layer4``; for torchvision models with a
``features`` sequence: its pooling stages or its children. Any other module path may be asked
for by name.

The same catalog defines the *groups* used by fine-tuning (``last:N``): every parameter belongs to
the first catalog layer whose forward pass finishes at or after its own module's, and parameters
after the last catalog layer belong to the classifier.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transferlab.util import UserInputError

from .pooling import Pooling, parse_pooling
from .spec import parse_layers, storage_dtype

CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads", "global_pool", "avgpool", "pre_logits", "fc_norm")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    depth: int  # position on the catalog's depth axis (module docstring)
    rel_depth: float  # depth / (catalog size - 1)
    channels: int
    stride: int
    raw_shape: tuple  # (C, H, W) at the probed image size
    dim: int  # pooled dimension
    bytes_per_image: int

    def as_row(self) -> dict:
        return {"layer": self.name, "depth": self.depth, "rel_depth": self.rel_depth, "channels": self.channels,
                "stride": self.stride, "raw_shape": "x".join(map(str, self.raw_shape)), "dim": self.dim,
                "bytes_per_image": self.bytes_per_image}


def _candidates(model: nn.Module) -> list[str]:
    mods = dict(model.named_modules())
    children = dict(model.named_children())
    if "blocks" in children and isinstance(children["blocks"], nn.Sequential) and "conv_stem" in children:
        stem = "bn1" if "bn1" in children else "conv_stem"
        head = [n for n in ("bn2", "conv_head") if n in children][:1]
        return [stem] + [f"blocks.{i}" for i in range(len(children["blocks"]))] + head
    if all(f"layer{i}" in children for i in (1, 2, 3, 4)):
        stem = "act1" if "act1" in children else ("relu" if "relu" in children else "bn1")
        return [stem] + [f"layer{i}" for i in (1, 2, 3, 4)]
    if "stages" in children and isinstance(children["stages"], nn.Sequential):
        stem = ["stem"] if "stem" in children else []
        tail = [n for n in ("norm_pre", "final_conv", "conv_head") if n in children][:1]
        return stem + [f"stages.{i}" for i in range(len(children["stages"]))] + tail
    if "features" in children and isinstance(children["features"], nn.Sequential):
        feats = list(children["features"].named_children())
        pools = [f"features.{n}" for n, m in feats if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))]
        if len(feats) > 20 and pools:
            return pools
        return [f"features.{n}" for n, _ in feats]
    names = [n for n, m in children.items() if n not in CLASSIFIER_NAMES and any(True for _ in m.parameters())]
    return names or [n for n in mods if n and "." not in n]


def probe(model: nn.Module, names: list[str], image_size: int) -> dict[str, tuple]:
    """One forward pass on zeros: for every named module its first output shape and end order."""
    mods = dict(model.named_modules())
    seen: dict[str, tuple] = {}
    order: list[str] = []
    hooks = []

    def make(name):
        def hook(_m, _i, out):
            if name not in seen and isinstance(out, torch.Tensor):
                seen[name] = tuple(out.shape[1:])
                order.append(name)
        return hook

    for n in names:
        hooks.append(mods[n].register_forward_hook(make(n)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
        with torch.inference_mode():
            model(torch.zeros(1, 3, image_size, image_size, device=dev))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: seen[n] for n in order}


def _stride(shape: tuple, image_size: int) -> int:
    if len(shape) == 3 and shape[-1] > 0:
        return max(1, round(image_size / shape[-1]))
    return image_size


def catalog(model: nn.Module, layers: "str | list[str]" = "all", pool: "str | Pooling" = "gap",
            image_size: int = 224, dtype: str = "float16") -> list[LayerInfo]:
    """The requested layers in forward order with channels, stride, pooled dim and bytes per image.

    Parameters
    ----------
    layers : ``"all"`` or list of module paths (a comma-separated string works too).
    """
    pooling = parse_pooling(pool)
    itemsize = storage_dtype(dtype).itemsize
    defaults = _candidates(model)
    layers = resolve_names(model, layers)
    mods = dict(model.named_modules())
    unknown = [n for n in layers if n not in mods or n == ""]
    if unknown:
        raise UserInputError(
            f"unknown layer{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; valid layers: "
            f"{', '.join(defaults)} (or any module path of model.named_modules())")
    shapes = probe(model, list(dict.fromkeys(defaults + layers)), image_size)
    missing = [n for n in layers if n not in shapes]
    if missing:
        raise UserInputError(f"layer {', '.join(missing)} is not run by the forward pass (or gives no tensor); "
                             f"choose from {', '.join(defaults)}")
    order = list(shapes)
    axis = [n for n in order if n in defaults]
    n_axis = len(axis)
    wanted = set(layers)
    out = []
    for pos, (name, shape) in enumerate(shapes.items()):
        if name not in wanted:
            continue
        depth = next((i for i, a in enumerate(axis) if order.index(a) >= pos), n_axis)
        flat = len(shape) == 1
        ch = shape[0] if len(shape) != 2 else shape[1]  # (L, C) token maps
        dim = pooling.dim(ch, flat=flat)
        out.append(LayerInfo(name, depth, round(depth / (n_axis - 1), 4) if n_axis > 1 else 1.0, int(ch),
                             _stride(shape, image_size), shape, int(dim), int(dim * itemsize)))
    return out


def resolve_names(model: nn.Module, layers: "str | list[str]") -> list[str]:
    """The layer spec's names (:func:`features.spec.parse_layers`), "all" being the model's default catalog."""
    return parse_layers(layers, lambda: _candidates(model))


def default_layers(model: nn.Module) -> list[str]:
    return _candidates(model)


def parameter_groups(model: nn.Module, image_size: int = 64) -> dict[str, list[str]]:
    """Map each catalog group (plus ``classifier``) to the parameter names it owns, in forward order."""
    group_names = _candidates(model)
    leaves = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    order = list(probe(model, list(dict.fromkeys(group_names + leaves)), image_size))
    rank = {n: i for i, n in enumerate(order)}
    groups_in_order = [g for g in order if g in group_names]
    groups = {g: [] for g in groups_in_order}
    groups["classifier"] = []
    owner_of = {}
    for leaf in leaves:
        r = rank.get(leaf)
        owner = "classifier"
        if r is not None:
            for g in groups_in_order:
                if rank[g] >= r:
                    owner = g
                    break
        owner_of[leaf] = owner
    for pname, _ in model.named_parameters():
        mod = pname.rsplit(".", 1)[0]
        groups[owner_of.get(mod, "classifier")].append(pname)
    return groups
