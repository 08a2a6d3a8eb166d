"""A fine-tuned model on disk: ``model.pt`` (state dict) and ``model.json`` (how to rebuild it).

``model.json`` holds the resolved extraction spec (backbone, weights and their sha256, input size,
mean, std and interpolation of the preprocessing: ``features.spec``), the architecture, the number
of classes and their names. Integrity rule: :func:`transferlab.util.save_artifact`, as for a head's
``head.json`` (atomic writes, ``model.pt`` first; ``model_file``, ``model_sha256``,
``format_version`` and the self-hash ``meta_sha256``), so a ``model.pt`` or ``model.json`` changed
or truncated later is refused on load; a ``model.json`` without ``format_version`` (written before
it had one) is read with ``model.pt``'s hash checked only. ``model.pt`` holds tensors only and is
read with ``torch.load(weights_only=True)``: no code runs whoever wrote it. :func:`load_finetuned`
rebuilds the architecture (no pretrained weights needed), puts the new classifier on it and loads
the state dict; :func:`predict_finetuned` classifies uint8 images with the same preprocessing as
evaluation during fine-tuning.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from transferlab.features.backbones import build_backbone, resolve_device
from transferlab.features.preprocess import normalize_batch, to_rgb_uint8
from transferlab.features.spec import ExtractionSpec
from transferlab.util import UserInputError, read_artifact, read_payload, save_artifact, verify_artifact

from .model import replace_classifier

META_FILE = "model.json"
MODEL_FILE = "model.pt"
FORMAT_VERSION = 2  # 1 (no format_version written): no self-hash


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserInputError(message)


def save_finetuned(out: Path, fm, spec: ExtractionSpec, cfg: dict, metrics: dict) -> None:
    """Write ``model.pt`` then ``model.json`` (:func:`transferlab.util.save_artifact`)."""
    bb = fm.backbone
    buf = io.BytesIO()
    torch.save({k: v.detach().to("cpu") for k, v in fm.model.state_dict().items()}, buf)
    save_artifact(out, META_FILE, {
        "backbone": bb.spec, "weights": bb.weights, "arch": bb.arch,
        "family": bb.family, "mode": cfg["mode"], "extraction": spec.to_dict(),
        "num_classes": fm.num_classes, "class_names": metrics["class_names"], "feature_dim": fm.feature_dim,
        "last_layer": fm.catalog_groups[-1], "data": cfg["data"],
        "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
        "versions": metrics["versions"]}, {"model": (MODEL_FILE, buf.getvalue())}, FORMAT_VERSION)


def load_finetuned(run_dir, device="cpu") -> tuple:
    """Rebuild a fine-tuned model for inference: ``(model in eval mode, model.json as a dict)``.

    ``meta["spec"]`` is the :class:`ExtractionSpec` of the model's preprocessing.

    Examples
    --------
    >>> model, meta = load_finetuned("runs/ft_last2")                   # doctest: +SKIP
    >>> probs = predict_finetuned(model, meta, images_uint8)             # doctest: +SKIP
    """
    run_dir = Path(run_dir).expanduser()
    fix = "rerun the fine-tuning"
    _check((run_dir / META_FILE).is_file() and (run_dir / MODEL_FILE).is_file(),
           f"{run_dir} has no model.json and model.pt; give the --out of a finished `transferlab finetune`")
    meta = read_artifact(run_dir, META_FILE, fix, verify=False)
    if "format_version" in meta:  # written with a self-hash (older files have none to check)
        verify_artifact(meta, run_dir / META_FILE, fix)
        _check(meta["format_version"] == FORMAT_VERSION, f"{run_dir / META_FILE} has format version "
               f"{meta['format_version']!r}, which this version of TransferLab does not read: {fix}")
    try:
        meta["spec"] = ExtractionSpec.from_dict(meta["extraction"])
        bb = build_backbone(meta["backbone"], weights="random", seed=0)
        replace_classifier(bb, int(meta["num_classes"]), 0)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"cannot read {run_dir / META_FILE} ({exc.__class__.__name__}: {exc}); {fix}") from None
    data = read_payload(run_dir, meta, "model", (MODEL_FILE,), fix)
    try:
        bb.model.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except Exception as exc:
        raise UserInputError(f"cannot load {run_dir / MODEL_FILE} ({exc.__class__.__name__}); {fix}") from None
    return bb.model.to(resolve_device(device)).eval(), meta


@torch.inference_mode()
def predict_finetuned(model, meta: dict, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, num_classes) for uint8 images (N,H,W[,C]) with the model's preprocessing."""
    x_all = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8(np.asarray(images)))).permute(0, 3, 1, 2)
    dev = next(model.parameters()).device
    out = []
    spec = meta["spec"]
    for s in range(0, len(x_all), batch_size):
        x = normalize_batch(x_all[s:s + batch_size].to(dev), spec.image_size, spec.mean, spec.std, spec.interpolation)
        out.append(torch.softmax(model(x).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, meta["num_classes"]), np.float32)
