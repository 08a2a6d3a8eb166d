"""``transferlab advise``: measure the evidence on a capped subset, then name the transfer regime.

What it measures (all on training and validation rows; the test split is never read):

1. size: images per class, total, balance;
2. the depth curve: a logistic-regression probe at every catalog layer, every layer measured the
   same way and the peak compared with the last layer by a paired statistic
   (:func:`transferlab.pipeline.evidence.measure_curve`, shared with the sweep's report: repeated
   k-fold on train+val when validation is small, one split otherwise);
3. training-free scores per layer: cosine k-NN accuracy and LogME
   (:mod:`transferlab.classifiers.transferability`);
4. similarity to the source: the ImageNet classifier's mean top-1 confidence and entropy on the
   validation images, and the pretrained-vs-random gap at the best layers;
5. the probe's learning curve at the chosen layer (25/50/100% of the training rows, scored on the
   same validation rows: the last rise is a paired gap);
6. optionally (``finetune_probe``) a short ``last:2`` fine-tune on the subset.

Large data sets are subsampled (stratified, seeded) to ``max_train`` training and ``max_val``
validation rows; the per-class size used for the decision is the full data set's. The features go
through the normal cache (keyed by the subset's fingerprint), so a second ``advise`` reuses them.
:func:`transferlab.pipeline.decision.decide` turns the evidence into the recommendation.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from transferlab.classifiers.holdout import stratified_holdout, stratified_sample
from transferlab.classifiers.compare import paired_split_gap, split_correctness
from transferlab.classifiers.transferability import knn_accuracy, logme
from transferlab.features import ExtractionSpec, build_backbone, default_layers, extract, load_dataset
from transferlab.features.cache import layer_info, load_split, read_cache_meta
from transferlab.features.data import Dataset
from transferlab.features.spec import resolve_image_size
from transferlab.util import UserInputError, sha256_json

from .decision import THRESHOLDS, Evidence, decide
from .evidence import measure_curve

LOGME_ROWS = 3000
MIN_PER_CLASS = 5  # fewer training images in a class: nothing can be measured, say so


@dataclass
class Advice:
    strategy: str
    runner_up: str
    close: bool
    chosen_layer: str | None
    reasons: list
    evidence: dict
    facts: dict
    thresholds: dict
    next_command: str
    seconds: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def advice_subset(ds: Dataset, max_train: int, max_val: int, val_fraction: float, seed: int) -> Dataset:
    """A Dataset of capped, stratified train and val splits (no test split): what advise measures on.

    Validation rows are the data's ``val`` split, else the rows
    :func:`~transferlab.classifiers.protocol.stratified_holdout` holds out of train (those of the
    heads and fine-tuning); then each side is capped by a stratified sample."""
    tr = ds.splits["train"]
    if "val" in ds.splits and len(ds.splits["val"]):
        val, source, train_idx = ds.splits["val"], "val split", np.arange(len(tr))
        val_idx = stratified_sample(val.labels, max_val, seed)
    else:
        train_idx, val_idx, reason = stratified_holdout(tr.labels, val_fraction, seed)
        if reason is not None:
            raise UserInputError(f"{ds.spec}: cannot hold out validation rows ({reason}); "
                                 f"add images or a val split")
        val, source = tr, f"{val_fraction:g} of train"
        val_idx = val_idx[stratified_sample(tr.labels[val_idx], max_val, seed)]
    train_idx = train_idx[stratified_sample(tr.labels[train_idx], max_train, seed)]
    splits = {"train": tr.take(train_idx), "val": val.take(val_idx, "val")}
    fp = sha256_json({"data": ds.fingerprint, "train": train_idx.tolist(), "val": val_idx.tolist(), "val_from": source})
    sub = Dataset(f"{ds.spec}#advise", splits, ds.class_names, fp)
    sub.val_source = source
    return sub


def _scores(path, points, seed, log) -> None:
    """Training-free kNN accuracy and LogME of each layer, on the one validation split (shown, not decided on)."""
    for p in points:
        X, y, _ = load_split(path, "train", p.layer)
        Xv, yv, _ = load_split(path, "val", p.layer)
        p.knn = knn_accuracy(X, y, Xv, yv, k=10)
        rows = stratified_sample(y, LOGME_ROWS, seed)
        p.logme = logme(X[rows], y[rows])
        log(f"  {p.layer:<12} knn {p.knn:.3f}  logme {p.logme:+.3f}")


def _source_confidence(path, layer) -> tuple:
    logits, _, _ = load_split(path, "val", layer)
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / math.log(p.shape[1])
    return float(p.max(1).mean()), float(ent.mean())


def _learning_curve(path, layer, seed) -> tuple[dict, dict]:
    """Validation accuracy of the probe on 25/50/100% of the training rows, and the last rise as a paired gap."""
    X, y, _ = load_split(path, "train", layer)
    Xv, yv, _ = load_split(path, "val", layer)
    out, correct = {}, {}
    for frac in (0.25, 0.5, 1.0):
        idx = stratified_sample(y, max(int(round(frac * y.size)), 2 * np.unique(y).size), seed)
        correct[frac], _ = split_correctness(X[idx], y[idx], Xv, yv, "logreg", seed=seed)
        out[frac] = float(correct[frac].mean())
    return out, paired_split_gap(correct[1.0], correct[0.5]).to_dict()


def _next_command(strategy, data, backbone, image_size, decision) -> str:
    size = f" --image-size {image_size}"
    if strategy == "generic-features":
        layers = ",".join(dict.fromkeys([decision.facts.get("peak_layer"), decision.facts.get("last_layer")]))
        return f"transferlab sweep --data {data} --backbone {backbone}{size} --layers {layers} --heads logreg,svm"
    if strategy == "linear-probe":
        return (f"transferlab sweep --data {data} --backbone {backbone}{size} "
                f"--layers {decision.facts.get('last_layer')} --heads logreg")
    if strategy == "fine-tune":
        return f"transferlab finetune --data {data} --backbone {backbone}{size} --mode last:2 --epochs 10"
    return f"transferlab finetune --data {data} --backbone {backbone}{size} --mode scratch --epochs 30"


def advise(data, backbone: str = "lite0", image_size="auto", pool: str = "gap", seed: int = 0,
           max_train: int = 5000, max_val: int = 2000, val_fraction: float = 0.2, compare_random: bool = True,
           scores: bool = True, finetune_probe: bool = False, cache_dir=None, device: str = "auto",
           progress: bool = False, log=None) -> Advice:
    """Measure the evidence and recommend one of the four regimes.

    Parameters
    ----------
    data : str or Dataset
        A data spec (``digits``, ``npz:PATH``, ``folder:PATH``).
    backbone : str
        ImageNet backbone (``lite0``, ``timm:NAME``, ``torchvision:NAME``).
    image_size : ``auto`` (the data's median shorter side, :func:`transferlab.features.spec.resolve_image_size`),
        pixels, or 0 (the backbone's own).
    pool : see :class:`transferlab.features.ExtractionSpec`.
    max_train, max_val : int
        Caps of the stratified subset measured on.
    compare_random : bool
        Also probe the same architecture with random weights (the pretrained-vs-random gap).
    scores : bool
        kNN accuracy and LogME per layer.
    finetune_probe : bool
        Also fine-tune ``last:2`` briefly on the subset and compare.

    Returns
    -------
    Advice
        ``strategy``, ``runner_up``, ``reasons``, the evidence, the thresholds and ``next_command``.

    Examples
    --------
    >>> a = advise("digits")              # doctest: +SKIP
    >>> a.strategy                        # doctest: +SKIP
    'generic-features'
    """
    started = time.perf_counter()
    log = log or (lambda m: print(m, file=sys.stderr))
    ds = load_dataset(data, seed=seed)
    y = ds.splits["train"].labels
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise UserInputError(f"{ds.spec} has a single class in its training split ({ds.class_names[classes[0]] if classes.size else 'none'}); "
                             f"a classifier needs at least two")
    if int(counts.min()) < MIN_PER_CLASS:
        small = ds.class_names[int(classes[counts.argmin()])]
        warning = (f"warning: class {small} has {int(counts.min())} training image(s), fewer than {MIN_PER_CLASS}: "
                   f"too few to hold out validation rows and measure anything; with this little data a linear "
                   f"probe on the last layer is the safe default")
        log(warning)
        sizes = {"n_train": int(y.size), "n_classes": int(classes.size), "per_class_min": int(counts.min()),
                 "per_class_median": float(np.median(counts))}
        return Advice("linear-probe", "generic-features", True, None, [warning], sizes, sizes, dict(THRESHOLDS),
                      f"transferlab sweep --data {ds.spec} --backbone {backbone} --heads logreg --layers all",
                      round(time.perf_counter() - started, 1))
    sub = advice_subset(ds, max_train, max_val, val_fraction, seed)
    size = resolve_image_size(image_size, ds, backbone)  # auto: from the whole data set, not the subset
    log(size.line())
    image_size = size.size
    spec = ExtractionSpec(backbone, "imagenet", seed, image_size, pool)
    bb = build_backbone(spec.backbone, "imagenet", seed)
    # the source classifier's logits ride along in the same pass (pooling passes flat outputs through)
    extra = [bb.classifier] if bb.classifier in dict(bb.model.named_modules()) and bb.class_names else []
    log(f"advise: {ds.spec}, {len(sub.splits['train'])} train / {len(sub.splits['val'])} val rows "
        f"({sub.val_source}), {bb.spec} at {spec.image_size or bb.input_size} px")
    path = extract(sub, bb, layers=default_layers(bb.model) + extra, spec=spec, cache_dir=cache_dir, device=device,
                   progress=progress, log=lambda m: None)
    layers = list(read_cache_meta(path)["catalog"])
    conf, ent = _source_confidence(path, extra[0]) if extra else (None, None)
    log("pretrained, per layer (validation):")
    measured = measure_curve(path, layers, seed=seed, val_fraction=val_fraction, log=log)
    curve = measured.points
    if scores:
        _scores(path, curve, seed, log)
    random_best = random_n = None
    if compare_random:
        rspec = ExtractionSpec(backbone, "random", seed, image_size, pool)
        rpath = extract(sub, layers="all", spec=rspec, cache_dir=cache_dir, device=device, progress=progress,
                        log=lambda m: None)
        log("random weights, per layer (validation):")
        rcurve = measure_curve(rpath, layers, seed=seed, val_fraction=val_fraction, log=log).points
        best = max(rcurve, key=lambda p: p.val_accuracy)
        random_best, random_n = best.val_accuracy, best.n_val
    ev = Evidence(n_train=int(y.size), n_classes=int(classes.size), per_class_min=int(counts.min()),
                  per_class_median=float(np.median(counts)), curve=curve, random_best=random_best,
                  random_n_val=random_n, source_confidence=conf, source_entropy=ent, peak_gap=measured.gap_record())
    first = decide(ev)
    ev.learning_curve, ev.learning_gap = _learning_curve(path, first.chosen_layer or layers[-1], seed)
    if finetune_probe:
        import shutil
        import tempfile

        from transferlab.finetuning import finetune

        probe_data = Dataset(sub.spec, {**sub.splits, "test": sub.splits["val"]}, sub.class_names, sub.fingerprint)
        out = tempfile.mkdtemp(prefix="transferlab-advise-")
        try:
            m = finetune(probe_data, backbone, mode="last:2", epochs=2, image_size=spec.image_size, seed=seed,
                         augment=False, out=out, progress=progress)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        ev.finetune_val, ev.finetune_n_val = m["val_accuracy"], len(sub.splits["val"])
        ev.finetune_budget = f"last:2, 2 epochs on the advice subset, {spec.image_size or bb.input_size} px"
    decision = decide(ev)
    spec_name = ds.spec
    return Advice(decision.strategy, decision.runner_up, decision.close, decision.chosen_layer, decision.reasons,
                  ev.to_dict(), decision.facts, dict(THRESHOLDS),
                  _next_command(decision.strategy, spec_name, backbone, spec.image_size, decision),
                  round(time.perf_counter() - started, 1))
