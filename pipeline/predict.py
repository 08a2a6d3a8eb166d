"""Classify image files with a saved head and the backbone it was trained on, or a fine-tuned model.

``--model DIR`` is either a ``train --out`` directory (``head.json``: the backbone, weights with their
sha256, image size, pooling and layer; the backbone is rebuilt from those, its weights fingerprint
checked, and the one layer extracted with the same preprocessing as the cached features) or a
``finetune --out`` directory (``model.json`` + ``model.pt``: the whole fine-tuned network).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from features import FeatureTap, UserInputError, build_backbone, parse_pooling, resolve_device
from features.preprocess import preprocess_image, read_image


def predict(model_dir, images, batch_size: int = 32, device: str = "auto", progress: bool = True) -> list[dict]:
    """Return one ``{"path", "class", "label", "score"}`` dict per image, in the given order."""
    from classifiers import load_head

    paths = [Path(p) for p in images]
    if not paths:
        raise UserInputError("predict needs at least one IMAGE path")
    for p in paths:
        if not p.is_file():
            raise UserInputError(f"image {p} does not exist")
    model_dir = Path(model_dir).expanduser()
    if (model_dir / "model.json").is_file() and not (model_dir / "head.json").is_file():
        return _predict_finetuned(model_dir, paths, batch_size, device, progress)
    head, meta = load_head(model_dir)
    bb = build_backbone(meta["backbone"], weights=meta["weights"], seed=int(meta.get("seed", 0)))
    if meta.get("weights_sha256") and bb.weights_sha256 != meta["weights_sha256"]:
        raise UserInputError(f"the weights of {meta['backbone']} ({meta['weights']}) are not the ones the head in "
                             f"{model_dir} was trained on (sha256 differs); retrain the head")
    size, layer = int(meta["image_size"]), meta["layer"]
    mean, std = meta.get("mean", bb.mean), meta.get("std", bb.std)
    dev = resolve_device(device)
    model = bb.model.to(dev).eval()
    tap = FeatureTap(model, [layer], parse_pooling(meta["pooling"]), stop_after=layer)
    class_names = list(meta.get("class_names") or [])
    rows = []
    try:
        with torch.inference_mode():
            for s in tqdm(range(0, len(paths), batch_size), disable=not progress or len(paths) <= batch_size,
                          desc="predict", unit="batch"):
                chunk = paths[s:s + batch_size]
                x = torch.stack([preprocess_image(read_image(p), size, mean, std, bb.interpolation) for p in chunk])
                # round to the cache's storage dtype, as the head's training rows were
                feats = tap(x.to(dev))[layer].cpu().numpy().astype(meta.get("dtype", "float32")).astype(np.float32)
                labels = head.predict(feats)
                if hasattr(head, "predict_proba"):
                    scores = head.predict_proba(feats).max(axis=1)
                else:
                    scores = np.asarray(head.decision_function(feats))
                    scores = scores.max(axis=1) if scores.ndim == 2 else np.abs(scores)
                for p, lab, sc in zip(chunk, labels, scores):
                    lab = int(lab)
                    name = class_names[lab] if lab < len(class_names) else str(lab)
                    rows.append({"path": str(p), "class": name, "label": lab, "score": float(sc)})
    finally:
        tap.close()
    return rows


def _predict_finetuned(run_dir: Path, paths: list, batch_size: int, device: str, progress: bool) -> list[dict]:
    from .finetune_saved import load_finetuned

    model, meta = load_finetuned(run_dir, device=str(resolve_device(device)))
    dev = next(model.parameters()).device
    names = list(meta.get("class_names") or [])
    rows = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(paths), batch_size), disable=not progress or len(paths) <= batch_size,
                      desc="predict", unit="batch"):
            chunk = paths[s:s + batch_size]
            x = torch.stack([preprocess_image(read_image(p), int(meta["image_size"]), meta["mean"], meta["std"],
                                              meta.get("interpolation", "bicubic")) for p in chunk])
            probs = torch.softmax(model(x.to(dev)).float(), 1).cpu().numpy()
            for p, pr in zip(chunk, probs):
                lab = int(pr.argmax())
                rows.append({"path": str(p), "class": names[lab] if lab < len(names) else str(lab), "label": lab,
                             "score": float(pr[lab])})
    return rows
