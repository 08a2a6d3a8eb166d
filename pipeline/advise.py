"""``transferlab advise``: measure the evidence on a sweep's rows (capped), then name the transfer regime.

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

The rows are a sweep's (the heads' training rows; the data's ``val`` split, else the heads' holdout
of train), each capped by a stratified, seeded sample to ``max_train`` and ``max_val``; the
per-class size used for the decision is the full data set's. The cache is the sweep's (one
extraction spec per weights, one key): data within the caps is extracted whole, every split, so a
``sweep`` after ``advise`` extracts nothing; larger data reads its sample from a complete file of
the full data (:func:`transferlab.features.memo.cached_extraction`), else extracts the sample into
a file of its own and says so (see :func:`advice_rows`). :func:`transferlab.pipeline.decision.decide`
turns the evidence into the recommendation.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import numpy as np

from transferlab.classifiers.compare import paired_split_gap, split_correctness
from transferlab.classifiers.holdout import stratified_holdout, stratified_sample
from transferlab.classifiers.transferability import knn_accuracy, logme
from transferlab.features import ExtractionSpec, build_backbone, default_layers, extract, load_dataset
from transferlab.features.cache import load_split, read_cache_meta
from transferlab.features.data import Dataset
from transferlab.features.memo import cached_extraction
from transferlab.features.spec import DEFAULT_IMAGE_SIZE, resolve_image_size
from transferlab.util import UserInputError, sha256_json

from .decision import THRESHOLDS, Evidence, choose_size, decide
from .evidence import FeatureRows, measure_curve, peak_gap_between, train_val_rows

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


@dataclass
class AdviceRows:
    """The rows advise measures, as positions in the full data set.

    ``train_idx``: the heads' training rows (positions in the train split); ``val_split`` and
    ``val_idx``: the validation rows (all of the ``val`` split, else the heads' holdout of train);
    ``keep_train`` and ``keep_val``: the capped sample, positions within ``train_idx`` and ``val_idx``.
    """

    train_idx: np.ndarray
    val_split: str
    val_idx: np.ndarray
    keep_train: np.ndarray
    keep_val: np.ndarray
    source: str  # where the validation rows come from: "val split" or "<fraction> of train"

    @property
    def capped(self) -> bool:
        return len(self.keep_train) < len(self.train_idx) or len(self.keep_val) < len(self.val_idx)

    def taken(self) -> tuple:
        """``(train rows, val rows)`` measured on: positions in the train split and in ``val_split``."""
        return self.train_idx[self.keep_train], self.val_idx[self.keep_val]

    def subset(self, ds: Dataset) -> Dataset:
        """The measured rows as a Dataset of ``train`` and ``val`` splits (no test split), with a fingerprint
        of its own: what advise extracts when the data exceeds its caps and no full cache file exists."""
        train_idx, val_idx = self.taken()
        splits = {"train": ds.splits["train"].take(train_idx), "val": ds.splits[self.val_split].take(val_idx, "val")}
        fp = sha256_json({"data": ds.fingerprint, "train": train_idx.tolist(), "val": val_idx.tolist(),
                          "val_from": self.source})
        return Dataset(f"{ds.spec}#advise", splits, ds.class_names, fp)

    def validation_only(self, ds: Dataset) -> Dataset:
        """The measured validation rows alone, as a ``val`` split: the source classifier's logits for them
        are computed in a small file of their own when the full data's file lacks the classifier layer."""
        _, val_idx = self.taken()
        fp = sha256_json({"data": ds.fingerprint, "val": val_idx.tolist(), "val_from": self.source, "only": "val"})
        return Dataset(f"{ds.spec}#advise-val", {"val": ds.splits[self.val_split].take(val_idx, "val")},
                       ds.class_names, fp)


def advice_rows(ds: Dataset, max_train: int, max_val: int, val_fraction: float, seed: int) -> AdviceRows:
    """The training and validation rows of ``ds`` a sweep uses, and advise's capped stratified sample of each.

    Validation rows are the data's ``val`` split, else the rows
    :func:`~transferlab.classifiers.holdout.stratified_holdout` holds out of train (those of the
    heads and fine-tuning); then each side is capped by a stratified sample."""
    tr = ds.splits["train"]
    if "val" in ds.splits and len(ds.splits["val"]):
        val_split, source = "val", "val split"
        train_idx, val_idx = np.arange(len(tr)), np.arange(len(ds.splits["val"]))
    else:
        train_idx, val_idx, reason = stratified_holdout(tr.labels, val_fraction, seed)
        if reason is not None:
            raise UserInputError(f"{ds.spec}: cannot hold out validation rows ({reason}); "
                                 f"add images or a val split")
        val_split, source = "train", f"{val_fraction:g} of train"
    val_labels = ds.splits[val_split].labels[val_idx]
    return AdviceRows(train_idx, val_split, val_idx, stratified_sample(tr.labels[train_idx], max_train, seed),
                      stratified_sample(val_labels, max_val, seed), source)


def advice_subset(ds: Dataset, max_train: int, max_val: int, val_fraction: float, seed: int) -> Dataset:
    """The capped rows of :func:`advice_rows` as a Dataset (:meth:`AdviceRows.subset`)."""
    return advice_rows(ds, max_train, max_val, val_fraction, seed).subset(ds)


def _measured_rows(ds: Dataset, rows: AdviceRows, spec: ExtractionSpec, layers, logits_layer: str | None, *,
                   val_fraction: float, seed: int, log, **extract_args) -> tuple:
    """``(FeatureRows, validation logits or None)`` for one extraction spec, sharing the sweep's cache file.

    The full data's cache file of ``spec`` is read when complete (no torch needed to find it); data
    within the caps is extracted whole into that file; only data over the caps with no such file
    gets a capped subset in a file of its own. The logits of ``logits_layer`` on the validation rows
    come from the same file, else (a sweep wrote it, without that layer) from those rows alone."""
    cache_dir = extract_args["cache_dir"]
    notes = lambda m: log(m) if str(m).startswith("note") else None  # noqa: E731 (the time estimate passes)
    full = cached_extraction(ds, spec, "all", cache_dir)
    if full is None and not rows.capped:
        full = extract(ds, layers=layers, spec=spec, log=notes, **extract_args)
    if full is not None and rows.capped:
        log(f"advise reads its capped sample ({spec.weights} weights) from the full data's cache file {full}")
        source = FeatureRows(full, rows.keep_train, rows.keep_val)
    elif full is not None:
        source = FeatureRows(full)
    else:
        sub = rows.subset(ds)
        n = sum(len(s) for s in sub.splits.values())
        log(f"advise measures a capped subset of {n} rows ({spec.weights} weights): its own cache file; "
            f"a sweep extracts the full data")
        source = FeatureRows(extract(sub, layers=layers, spec=spec, log=notes, **extract_args))
    if logits_layer is None:
        return source, None
    if full is None or cached_extraction(ds, spec, [logits_layer], cache_dir) is not None:
        return source, train_val_rows(source, logits_layer, val_fraction, seed)[2]
    path = extract(rows.validation_only(ds), layers=[logits_layer], spec=spec, log=lambda m: None, **extract_args)
    return source, load_split(path, "val", logits_layer)[0]


def _scores(source, points, seed, val_fraction, log) -> None:
    """Training-free kNN accuracy and LogME of each layer, on the one validation split (shown, not decided on)."""
    for p in points:
        X, y, Xv, yv = train_val_rows(source, p.layer, val_fraction, seed)
        p.knn = knn_accuracy(X, y, Xv, yv, k=10)
        rows = stratified_sample(y, LOGME_ROWS, seed)
        p.logme = logme(X[rows], y[rows])
        log(f"  {p.layer:<12} knn {p.knn:.3f}  logme {p.logme:+.3f}")


def _source_confidence(logits) -> tuple:
    z = logits.astype(np.float64)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    ent = -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / math.log(p.shape[1])
    return float(p.max(1).mean()), float(ent.mean())


def _learning_curve(source, layer, seed, val_fraction) -> tuple[dict, dict]:
    """Validation accuracy of the probe on 25/50/100% of the training rows, and the last rise as a paired gap."""
    X, y, Xv, yv = train_val_rows(source, layer, val_fraction, seed)
    out, correct = {}, {}
    for frac in (0.25, 0.5, 1.0):
        idx = stratified_sample(y, max(int(round(frac * y.size)), 2 * np.unique(y).size), seed)
        correct[frac], _ = split_correctness(X[idx], y[idx], Xv, yv, "logreg", seed=seed)
        out[frac] = float(correct[frac].mean())
    return out, paired_split_gap(correct[1.0], correct[0.5]).to_dict()


def other_size(size, compare_size) -> int | None:
    """The second input size advise measures, or None.

    ``auto``: 64 px (:data:`~transferlab.features.spec.DEFAULT_IMAGE_SIZE`) when the image size was
    resolved automatically to at least 1.25x that (photos that the old default scaled down: where the
    peak layer moves with resolution), else none (an explicit ``--image-size`` is the user's answer; data
    at 64 px or less has nothing finer to lose). A number: that size, when it differs. None, 0 or
    ``off``: none."""
    if compare_size is None or str(compare_size).lower() in ("0", "false", "off", "none"):
        return None
    if compare_size == "auto":
        floor = DEFAULT_IMAGE_SIZE
        return floor if size.auto and size.size >= 1.25 * floor else None
    px = int(compare_size)
    return px if px != size.size else None


def _size_summary(px: int, m, why: str) -> dict:
    """What the evidence keeps of one input size's measurement."""
    peak = max(m.points, key=lambda p: (p.val_accuracy, p.rel_depth))
    last = max(m.points, key=lambda p: p.rel_depth)
    return {"size": px, "why": why, "peak": peak.layer, "peak_val": peak.val_accuracy, "last": last.layer,
            "last_val": last.val_accuracy, "method": m.method}


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
           scores: bool = True, finetune_probe: bool = False, compare_size="auto", cache_dir=None,
           device: str = "auto", progress: bool = False, log=None) -> Advice:
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
    compare_size : ``auto``, pixels, or None
        A second input size at which the pretrained depth curve is measured on the same rows
        (:func:`other_size`); the advice is read at the better one
        (:func:`transferlab.pipeline.decision.choose_size`).

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
        only = ds.class_names[classes[0]] if classes.size else "none"
        raise UserInputError(f"{ds.spec} has a single class in its training split ({only}); "
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
    rows = advice_rows(ds, max_train, max_val, val_fraction, seed)
    size = resolve_image_size(image_size, ds, backbone)  # auto: from the whole data set, not the subset
    log(size.line())
    sizes = [size.size] + [px for px in [other_size(size, compare_size)] if px is not None]
    bb = build_backbone(backbone, "imagenet", seed)
    # the source classifier's logits ride along in the same pass (pooling passes flat outputs through)
    extra = [bb.classifier] if bb.classifier in dict(bb.model.named_modules()) and bb.class_names else []
    log(f"advise: {ds.spec}, {len(rows.keep_train)} train / {len(rows.keep_val)} val rows "
        f"({rows.source}), {bb.spec} at {' and '.join(f'{px or bb.input_size} px' for px in sizes)}")
    how = dict(val_fraction=val_fraction, seed=seed, log=log, cache_dir=cache_dir, device=device, progress=progress)
    at = {}  # input size -> (feature rows, source logits, curve measurement)
    for px in sizes:
        source, logits = _measured_rows(ds, rows, ExtractionSpec(backbone, "imagenet", seed, px, pool),
                                        default_layers(bb.model) + extra, extra[0] if extra else None, **how)
        layers = list(read_cache_meta(source.path)["catalog"])
        log(f"pretrained, per layer (validation){f' at {px} px' if len(sizes) > 1 else ''}:")
        at[px] = (source, logits, measure_curve(source, layers, seed=seed, val_fraction=val_fraction, n_jobs=-1,
                                                log=log))
    size_record, size_gap = None, None
    if len(sizes) > 1:
        size_record = [_size_summary(px, at[px][2], size.how if px == size.size else "compared")
                       for px in sizes]
        size_gap = peak_gap_between(at[sizes[1]][2], at[sizes[0]][2]).to_dict()
        image_size = choose_size(size_record, size_gap)[0]
    else:
        image_size = size.size
    source, logits, measured = at[image_size]
    spec = ExtractionSpec(backbone, "imagenet", seed, image_size, pool)
    conf, ent = _source_confidence(logits) if logits is not None else (None, None)
    curve = measured.points
    if scores:
        _scores(source, curve, seed, val_fraction, log)
    random_best = random_n = None
    if compare_random:
        rspec = ExtractionSpec(backbone, "random", seed, image_size, pool)
        rsource, _ = _measured_rows(ds, rows, rspec, "all", None, **how)
        log("random weights, per layer (validation):")
        rcurve = measure_curve(rsource, layers, seed=seed, val_fraction=val_fraction, n_jobs=-1, log=log).points
        best = max(rcurve, key=lambda p: p.val_accuracy)
        random_best, random_n = best.val_accuracy, best.n_val
    ev = Evidence(n_train=int(y.size), n_classes=int(classes.size), per_class_min=int(counts.min()),
                  per_class_median=float(np.median(counts)), curve=curve, random_best=random_best,
                  random_n_val=random_n, source_confidence=conf, source_entropy=ent, peak_gap=measured.gap_record(),
                  image_sizes=size_record, size_gap=size_gap)
    first = decide(ev)
    ev.learning_curve, ev.learning_gap = _learning_curve(source, first.chosen_layer or layers[-1], seed, val_fraction)
    if finetune_probe:
        import shutil
        import tempfile

        from transferlab.finetuning import finetune

        sub = rows.subset(ds)
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
