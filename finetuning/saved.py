"""A fine-tuned model on disk: ``model.pt`` (state dict) and ``model.json`` (how to rebuild it).

``model.json`` holds the resolved extraction spec (backbone, weights and their sha256, input size,
mean, std and interpolation of the preprocessing: ``features.spec``), the architecture, the number
of classes and their names, and the sha256 of ``model.pt``. Integrity rule: both files are written
atomically, ``model.pt`` first; ``model.json`` names ``model.pt``'s hash, so a ``model.pt`` changed
or truncated later is refused on load. :func:`load_finetuned` rebuilds the architecture (no pretrained weights
needed), puts the new classifier on it and loads the state dict; :func:`predict_finetuned`
classifies uint8 images with the same preprocessing as evaluation during fine-tuning.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from transferlab.features.backbones import build_backbone, resolve_device
from transferlab.features.preprocess import normalize_batch, to_rgb_uint8
from transferlab.features.spec import ExtractionSpec
from transferlab.util import UserInputError, atomic_write, sha256_file, write_json

from .model import replace_classifier
from .train import CHECKPOINT_FORMAT


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserInputError(message)


def save_finetuned(out: Path, fm, spec: ExtractionSpec, cfg: dict, metrics: dict) -> None:
    """Write ``model.pt`` then ``model.json`` (each atomically; ``model.json`` names ``model.pt``'s sha256)."""
    bb = fm.backbone
    state = {k: v.detach().to("cpu") for k, v in fm.model.state_dict().items()}
    atomic_write(out / "model.pt", lambda fh: torch.save(state, fh))
    write_json(out / "model.json", {
        "format": CHECKPOINT_FORMAT, "backbone": bb.spec, "weights": bb.weights, "arch": bb.arch,
        "family": bb.family, "mode": cfg["mode"], "extraction": spec.to_dict(),
        "num_classes": fm.num_classes, "class_names": metrics["class_names"], "feature_dim": fm.feature_dim,
        "last_layer": fm.catalog_groups[-1], "data": cfg["data"],
        "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
        "model_sha256": sha256_file(out / "model.pt"), "versions": metrics["versions"]})


def load_finetuned(run_dir, device="cpu") -> tuple:
    """Rebuild a fine-tuned model for inference: ``(model in eval mode, model.json as a dict)``.

    ``meta["spec"]`` is the :class:`ExtractionSpec` of the model's preprocessing.

    Examples
    --------
    >>> model, meta = load_finetuned("runs/ft_last2")                   # doctest: +SKIP
    >>> probs = predict_finetuned(model, meta, images_uint8)             # doctest: +SKIP
    """
    run_dir = Path(run_dir).expanduser()
    meta_path, weights_path = run_dir / "model.json", run_dir / "model.pt"
    _check(meta_path.is_file() and weights_path.is_file(),
           f"{run_dir} has no model.json and model.pt; give the --out of a finished `transferlab finetune`")
    try:
        meta = json.loads(meta_path.read_text())
        meta["spec"] = ExtractionSpec.from_dict(meta["extraction"])
        bb = build_backbone(meta["backbone"], weights="random", seed=0)
        replace_classifier(bb, int(meta["num_classes"]), 0)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"cannot read {meta_path} ({exc.__class__.__name__}: {exc}); rerun the fine-tuning") from None
    sha = meta.get("model_sha256")
    _check(not sha or sha256_file(weights_path) == sha,
           f"{weights_path} does not match the sha256 in model.json (changed or truncated); rerun the fine-tuning")
    try:
        bb.model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    except Exception as exc:
        raise UserInputError(f"cannot load {weights_path} ({exc.__class__.__name__}); rerun the fine-tuning") from None
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
