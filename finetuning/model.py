"""The network being fine-tuned: a backbone with a new classifier, frozen according to the mode.

Modes (``--mode``)
------------------
``head``
    The backbone is frozen, parameters *and* BatchNorm statistics (frozen modules run in eval
    mode); only a new, randomly initialised linear classifier learns.
``last:N``
    The last ``N`` groups of the layer catalog (:func:`features.layers.parameter_groups`) and the
    classifier learn; earlier groups are frozen as in ``head``.
``full``
    Everything learns, from the pretrained weights, with discriminative learning rates: the
    classifier gets ``lr`` and earlier groups a geometric spread down to ``lr / lr_spread`` for the
    first group (fastai's ``slice(lr/100, lr)``).
``scratch``
    The same architecture from its own random (He/Glorot) initialisation; everything learns.

BatchNorm statistics (``bn_stats``): in the pretrained modes every BatchNorm layer runs in eval
mode by default (``frozen``: running statistics fixed, affine parameters learn where trainable);
``update`` re-estimates them in the trainable groups. ``scratch`` always updates them. Frozen
groups never change their statistics.

A *group* is a layer of the catalog (``bn1``, ``blocks.0`` .. ``blocks.6``, ``bn2`` for lite0)
with the parameters whose forward pass ends inside it; ``classifier`` is the new linear head.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferlab.features.backbones import Backbone, build_backbone
from transferlab.features.layers import parameter_groups
from transferlab.features.spec import DEFAULT_IMAGE_SIZE
from transferlab.util import UserInputError, sha256_file

from .config import Mode, parse_mode  # noqa: F401 (Mode: for the callers of this module)

# AdamW defaults per mode (SGD uses 10x these): a new head learns fast, the full network from
# pretrained weights needs a smaller step at the top (and far smaller ones below, see lr_spread),
# a network from scratch needs a larger one than fine-tuning.
DEFAULT_LR = {"head": 1e-3, "last": 1e-3, "full": 3e-4, "scratch": 1e-3}
SGD_LR_FACTOR = 10.0
DEFAULT_LR_SPREAD = {"head": 1.0, "last": 1.0, "full": 100.0, "scratch": 1.0}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 5e-4}
# Pretrained BatchNorm statistics stay as they are unless asked: normalising with the statistics
# of small batches of another domain disturbs the pretrained features from the first step (the
# comparison is in bench/finetune_modes.md). From scratch they must be learned.
DEFAULT_BN_STATS = {"head": "frozen", "last": "frozen", "full": "frozen", "scratch": "update"}


@dataclass
class FinetuneModel:
    """A backbone with a new classifier and the bookkeeping of what learns."""

    backbone: Backbone
    model: nn.Module
    groups: dict  # group -> parameter names, forward order, "classifier" last
    trainable_groups: list
    feature_dim: int
    num_classes: int
    head: nn.Linear  # the new classifier
    # "frozen": every BatchNorm keeps its running statistics; "update": trained ones learn them
    bn_stats: str = "frozen"

    @property
    def catalog_groups(self) -> list:
        return [g for g in self.groups if g != "classifier"]

    @property
    def trainable_names(self) -> list:
        return [n for g in self.trainable_groups for n in self.groups[g]]

    def frozen_modules(self) -> list:
        """Modules whose own parameters are all frozen: they run in eval mode during training."""
        out = []
        for _, m in self.model.named_modules():
            params = list(m.parameters())
            if params and not any(p.requires_grad for p in params):
                out.append(m)
        return out

    def train_mode(self) -> None:
        """Train mode for what learns, eval mode (fixed BatchNorm statistics) for what is frozen.

        With ``bn_stats="frozen"`` every BatchNorm layer also stays in eval mode (its affine
        parameters still learn where the group is trainable).
        """
        self.model.train()
        for m in self.frozen_modules():
            m.eval()
        if self.bn_stats == "frozen":
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def _replace_linear(parent: nn.Module, attr: str, num_classes: int) -> nn.Linear:
    new = nn.Linear(getattr(parent, attr).in_features, num_classes)
    setattr(parent, attr, new)
    return new


def replace_classifier(bb: Backbone, num_classes: int, seed: int) -> nn.Linear:
    """Put a new, seeded linear classifier to ``num_classes`` on ``bb.model`` and return it."""
    model = bb.model
    torch.manual_seed(seed)
    if bb.family == "timm" and hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        head = model.get_classifier()
        if isinstance(head, nn.Linear):
            return head
    mod = getattr(model, bb.classifier, None) if bb.classifier else None
    if isinstance(mod, nn.Linear):
        return _replace_linear(model, bb.classifier, num_classes)
    if isinstance(mod, nn.Module):
        linears = [n for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            path = linears[-1].split(".")
            parent = mod.get_submodule(".".join(path[:-1])) if len(path) > 1 else mod
            return _replace_linear(parent, path[-1], num_classes)
    raise UserInputError(f"backbone {bb.spec} has no linear classifier that fine-tuning can replace; "
                         f"use lite0, a timm model or a torchvision model with fc/classifier")


def trainable_groups_for(mode: Mode, groups: dict, spec: str) -> list:
    catalog = [g for g in groups if g != "classifier"]
    if mode.kind == "head":
        return ["classifier"]
    if mode.kind == "last":
        if mode.n > len(catalog):
            raise UserInputError(f"mode last:{mode.n} asks for {mode.n} groups but {spec} has {len(catalog)} "
                                 f"({', '.join(catalog)}); use last:1 .. last:{len(catalog)} or full")
        return catalog[-mode.n:] + ["classifier"]
    return catalog + ["classifier"]


def build_finetune_model(backbone: str, mode: "str | Mode", num_classes: int, weights: str = "imagenet",
                         image_size: int | None = None, seed: int = 0, bn_stats: str | None = None) -> FinetuneModel:
    """The backbone (random weights for ``scratch``) with a new classifier, frozen by ``mode``.

    ``bn_stats`` defaults to ``frozen`` for the pretrained modes and ``update`` for ``scratch``.
    Deterministic in ``seed``: the same call gives the same initial weights.
    """
    mode = parse_mode(mode)
    bn_stats = bn_stats or DEFAULT_BN_STATS[mode.kind]
    if bn_stats not in ("frozen", "update"):
        raise UserInputError(f"unknown --bn-stats '{bn_stats}'; use frozen or update")
    bb = build_backbone(backbone, weights="random" if mode.kind == "scratch" else weights, seed=seed)
    head = replace_classifier(bb, num_classes, seed)
    # the probe only orders modules; a small input is enough
    groups = parameter_groups(bb.model, image_size=min(int(image_size or DEFAULT_IMAGE_SIZE), DEFAULT_IMAGE_SIZE))
    trainable = trainable_groups_for(mode, groups, bb.spec)
    learn = {n for g in trainable for n in groups[g]}
    for name, p in bb.model.named_parameters():
        p.requires_grad_(name in learn)
    return FinetuneModel(bb, bb.model, groups, trainable, int(head.in_features), num_classes, head, bn_stats)


def optimizer_param_groups(fm: FinetuneModel, lr: float, lr_spread: float, weight_decay: float) -> list:
    """One optimizer group per (catalog group, decay/no-decay), with discriminative learning rates.

    The last trainable group (the classifier) gets ``lr``, the first ``lr / lr_spread``, the ones in
    between a geometric spread. Biases and normalisation weights (1-d tensors) get no weight decay.
    """
    params = dict(fm.model.named_parameters())
    order = fm.trainable_groups
    k = len(order)
    out = []
    for i, g in enumerate(order):
        glr = lr / lr_spread ** ((k - 1 - i) / (k - 1)) if k > 1 else lr
        ps = [params[n] for n in fm.groups[g]]
        for decay, members in ((True, [p for p in ps if p.ndim > 1]), (False, [p for p in ps if p.ndim <= 1])):
            if members:
                out.append({"params": members, "lr": glr, "weight_decay": weight_decay if decay else 0.0,
                            "group": g})
    return out


def make_optimizer(name: str, param_groups: list, lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr)
    return torch.optim.SGD(param_groups, lr=lr, momentum=0.9)


class WarmupCosine:
    """Learning-rate factor at optimizer step ``s``: linear warm-up, then cosine decay to zero.

    A callable object (not a lambda) so that ``LambdaLR.state_dict()`` stores it.
    """

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# --- a trained logistic-regression head as the starting classifier (linear probe, then fine-tune)

def _load_head(run_dir: Path):
    from transferlab.classifiers import load_head  # checks the head file's sha256 and library versions

    return load_head(run_dir)


def _steps(est) -> list:
    return [s for _, s in est.steps] if hasattr(est, "steps") else [est]


def linear_from_head(est, feature_dim: int, num_classes: int, where: str) -> tuple:
    """``(W, b)`` of logits = W x + b on raw features, with any StandardScaler folded in."""
    from sklearn.preprocessing import StandardScaler

    *pre, final = _steps(est)
    mean, scale = np.zeros(feature_dim), np.ones(feature_dim)
    for step in pre:
        if not isinstance(step, StandardScaler):
            raise UserInputError(f"the head in {where} has a {type(step).__name__} step; only a StandardScaler "
                                 f"and a linear model fold into the classifier (train it with preprocessing "
                                 f"standardize or none, and no PCA)")
        mean, scale = mean + step.mean_ * scale, scale * step.scale_
    coef, intercept = getattr(final, "coef_", None), getattr(final, "intercept_", None)
    if coef is None or intercept is None:
        raise UserInputError(f"the head in {where} ({type(final).__name__}) is not linear; "
                             f"--init-head-from needs a logreg head")
    coef, intercept = np.atleast_2d(np.asarray(coef, dtype=np.float64)), np.atleast_1d(np.asarray(intercept, float))
    if coef.shape[1] != feature_dim:
        raise UserInputError(f"the head in {where} takes {coef.shape[1]} features but the classifier's input has "
                             f"{feature_dim}; train it on the last layer with gap pooling")
    classes = np.asarray(final.classes_)
    if coef.shape[0] == 1:  # binary: softmax([0, w.x + b]) equals the logistic model
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= num_classes:
        raise UserInputError(f"the head in {where} predicts classes {classes.tolist()[:10]} that are not the "
                             f"data's 0..{num_classes - 1}; train it on the same data set")
    w_x = coef / scale
    b_x = intercept - w_x @ mean
    weight = np.zeros((num_classes, feature_dim))
    bias = np.full(num_classes, float(b_x.min()) - 10.0)  # classes the head never saw start unlikely
    weight[classes], bias[classes] = w_x, b_x
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def init_classifier_from_head(fm: FinetuneModel, run_dir: "str | Path", last_layer: str) -> dict:
    """Copy a trained logreg head (last layer, gap pooling, no PCA) into the new classifier."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UserInputError(f"--init-head-from {run_dir} is not a directory; give the --out of `transferlab train`")
    est, meta = _load_head(run_dir)
    meta = meta or {}
    layer = meta.get("layer")
    if layer is not None and layer != last_layer:
        raise UserInputError(f"the head in {run_dir} was trained on layer {layer}; --init-head-from needs a head "
                             f"on the last layer ({last_layer})")
    pooling = (meta.get("extraction") or {}).get("pooling")
    if pooling is not None and str(pooling) != "gap":
        raise UserInputError(f"the head in {run_dir} uses {pooling} pooling; --init-head-from needs gap pooling")
    for key in ("backbone", "weights"):
        mine = fm.backbone.spec if key == "backbone" else fm.backbone.weights
        if meta.get(key) is not None and str(meta[key]) != str(mine):
            raise UserInputError(f"the head in {run_dir} was trained with {key} {meta[key]}, not {mine}; "
                                 f"use a head of the same {key}")
    weight, bias = linear_from_head(est, fm.feature_dim, fm.num_classes, str(run_dir))
    with torch.no_grad():
        fm.head.weight.copy_(weight)
        fm.head.bias.copy_(bias)
    joblib_file = run_dir / str(meta.get("head_file") or "head.joblib")
    sha = meta.get("head_sha256") or (sha256_file(joblib_file) if joblib_file.is_file() else None)
    return {"dir": str(run_dir), "layer": layer, "val_accuracy": meta.get("val_accuracy"), "sha256": sha}
