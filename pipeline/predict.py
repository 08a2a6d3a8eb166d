"""Classify image files with a saved head and the backbone it was trained on, or a fine-tuned model.

``--model DIR`` is either a ``train --out`` directory (``head.json`` holds the resolved extraction
spec of the cached features and the layer: the backbone is rebuilt from the spec's backbone,
weights and seed, its weights fingerprint checked against the spec, and the one layer extracted
with the spec's size, interpolation, mean, std, pooling and storage dtype) or a
``finetune --out`` directory (``model.json`` + ``model.pt``: the whole fine-tuned network).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from transferlab.features import ExtractionSpec, FeatureTap, UserInputError, build_backbone, resolve_device
from transferlab.features.preprocess import preprocess_image, read_image


def predict(model_dir, images, batch_size: int = 32, device: str = "auto", progress: bool = True) -> list[dict]:
    """Return one ``{"path", "class", "label", "score"}`` dict per image, in the given order."""
    from transferlab.classifiers import load_head

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
    if not isinstance(meta.get("extraction"), dict):
        raise UserInputError(f"{model_dir}/head.json has no extraction spec (written by an older version); "
                             f"retrain the head with `transferlab train`")
    spec, layer = ExtractionSpec.from_dict(meta["extraction"]), meta["layer"]
    bb = build_backbone(spec.backbone, weights=spec.weights, seed=spec.seed)
    if bb.weights_sha256 != spec.weights_sha256:
        raise UserInputError(f"the weights of {spec.backbone} ({spec.weights}) are not the ones the head in "
                             f"{model_dir} was trained on (sha256 differs); retrain the head")
    width = _head_width(head, meta, model_dir)
    if layer not in dict(bb.model.named_modules()):
        raise UserInputError(f"{model_dir}/head.json names layer {layer!r}, which {spec.backbone} does not have; "
                             f"retrain the head")
    dev = resolve_device(device)
    model = bb.model.to(dev).eval()
    tap = FeatureTap(model, [layer], spec.pool, stop_after=layer)
    class_names = list(meta.get("class_names") or [])
    rows = []
    try:
        with torch.inference_mode():
            for s in tqdm(range(0, len(paths), batch_size), disable=not progress or len(paths) <= batch_size,
                          desc="predict", unit="batch"):
                chunk = paths[s:s + batch_size]
                x = torch.stack([preprocess_image(read_image(p), spec.image_size, spec.mean, spec.std,
                                                  spec.interpolation) for p in chunk])
                # round to the cache's storage dtype, as the head's training rows were
                feats = tap(x.to(dev))[layer].cpu().numpy().astype(spec.dtype).astype(np.float32)
                if feats.shape[1] != width:
                    raise UserInputError(f"layer {layer!r} gives {feats.shape[1]} features but the head in {model_dir} "
                                         f"takes {width}; head.json does not describe this head: retrain it")
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


def _head_width(head, meta: dict, model_dir) -> int:
    """The feature width the head was fitted on; head.json's ``dim`` must agree."""
    width = getattr(head, "n_features_in_", None)
    if width is None or (meta.get("dim") is not None and int(meta["dim"]) != int(width)):
        raise UserInputError(f"{model_dir}/head.json says {meta.get('dim')} features but the head takes {width}; "
                             f"retrain the head")
    return int(width)


def _predict_finetuned(run_dir: Path, paths: list, batch_size: int, device: str, progress: bool) -> list[dict]:
    from transferlab.finetuning.saved import load_finetuned

    model, meta = load_finetuned(run_dir, device=str(resolve_device(device)))
    spec = meta["spec"]
    dev = next(model.parameters()).device
    names = list(meta.get("class_names") or [])
    rows = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(paths), batch_size), disable=not progress or len(paths) <= batch_size,
                      desc="predict", unit="batch"):
            chunk = paths[s:s + batch_size]
            x = torch.stack([preprocess_image(read_image(p), spec.image_size, spec.mean, spec.std, spec.interpolation)
                             for p in chunk])
            probs = torch.softmax(model(x.to(dev)).float(), 1).cpu().numpy()
            for p, pr in zip(chunk, probs):
                lab = int(pr.argmax())
                rows.append({"path": str(p), "class": names[lab] if lab < len(names) else str(lab), "label": lab,
                             "score": float(pr[lab])})
    return rows
