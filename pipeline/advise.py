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
   validation images, and the pretrained-vs-random gap at the best layers (random weights on k-fold rows:
   one repeat of the folds, :data:`RANDOM_REPEATS`);
5. the probe's learning curve at the chosen layer (25/50/100% of the training rows, scored on the
   same validation rows: the last rise is a paired gap);
6. the price (:mod:`transferlab.pipeline.price`): the training and forward throughput measured here,
   and (``finetune_probe``: by itself on large data when the budget allows) two short ``last:2``
   fine-tunes, one epoch over half the subset and over all of it, the curve a fine-tune's expected
   gain is extrapolated from. Every recommendation states its expected gain and its time here, and
   the runner-up's; a regime whose gain does not arrive within the budget (``--budget`` minutes,
   else :data:`~transferlab.pipeline.price.DEFAULT_BUDGET_MINUTES`, said) is not recommended.

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
from dataclasses import dataclass, field

import numpy as np

from transferlab.classifiers.compare import paired_split_gap, split_correctness
from transferlab.classifiers.holdout import stratified_sample, validation_source
from transferlab.classifiers.transferability import knn_accuracy, logme
from transferlab.features import ExtractionSpec, build_backbone, default_layers, extract, load_dataset
from transferlab.features.cache import load_split, read_cache_meta
from transferlab.features.data import Dataset
from transferlab.features.memo import cached_extraction
from transferlab.features.spec import DEFAULT_IMAGE_SIZE, resolve_image_size
from transferlab.util import UserInputError, sha256_json

from . import price
from .backbone_choice import Candidate, bytes_per_image, choose_backbone, extraction_rates, rate_how
from .decision import LARGE_PER_CLASS, THRESHOLDS, Evidence, choose_size, decide, stderr
from .evidence import FeatureRows, measure_curve, peak_gap_between, train_val_rows

LOGME_ROWS = 3000
MIN_PER_CLASS = 5  # fewer training images in a class: nothing can be measured, say so
# The random-weights curve on k-fold rows: the first repeat's folds only. Only its best layer's accuracy enters
# the decision (pretrained minus random, against an unpaired binomial standard error over all the rows, which one
# repeat already scores once each); the second repeat, which steadies the pretrained peak-vs-last gap, would
# double the random curve's cost for a figure the decision reads against 2 points.
RANDOM_REPEATS = 1


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
    seconds: float  # advise's own time, the short fine-tunes included
    budget_minutes: float = price.DEFAULT_BUDGET_MINUTES
    budget_assumed: bool = True  # no budget was given: the default was assumed
    price: dict = field(default_factory=dict)  # rates, offers per regime, the fine-tune curve, larger_budget
    backbones: list = field(default_factory=list)  # advise --backbone a,b: each backbone's regime and comparison
    backbone_pick: dict | None = None  # ... and the pick (pipeline/backbone_choice.py)
    candidate: object = field(default=None, repr=False)  # what the pick rule reads of this advice (not printed)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "candidate"}

    def price_lines(self) -> list:
        """The budget, the recommended regime's and the runner-up's price and gain, and what a larger budget
        would change: the lines the text output prints."""
        said = "assumed: pass --budget MINUTES to change it" if self.budget_assumed else "--budget"
        lines = [f"budget: {self.budget_minutes:g} min ({said})"]
        offers = self.price.get("offers") or {}
        measured = ["fine-tune"] if (offers.get("fine-tune") or {}).get("gain") is not None else []
        lines += [f"  {offers[r]['line']}" for r in dict.fromkeys([self.strategy, self.runner_up, *measured])
                  if r in offers]
        if self.price.get("larger_budget"):
            lines.append(f"  {self.price['larger_budget']}")
        return lines


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

    Validation rows by :func:`~transferlab.classifiers.holdout.validation_source` (those of the heads
    and fine-tuning); then each side is capped by a stratified sample."""
    tr = ds.splits["train"]
    n_val_split = len(ds.splits["val"]) if "val" in ds.splits else 0
    train_idx, val_idx, source, reason = validation_source(tr.labels, n_val_split, val_fraction, seed)
    if reason is not None:
        raise UserInputError(f"{ds.spec}: cannot hold out validation rows ({reason}); add images or a val split")
    val_split = "val" if n_val_split else "train"
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


def _one_blas_thread():
    """numpy's and SciPy's BLAS on one thread (torch's own threads untouched), as a context."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


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


def _learning_curve(source, layer, seed, val_fraction) -> tuple[dict, dict, float]:
    """Validation accuracy of the probe on 25/50/100% of the training rows, the last rise as a paired gap, and
    the seconds of the fit on all rows."""
    X, y, Xv, yv = train_val_rows(source, layer, val_fraction, seed)
    out, correct = {}, {}
    for frac in (0.25, 0.5, 1.0):
        idx = stratified_sample(y, max(int(round(frac * y.size)), 2 * np.unique(y).size), seed)
        t0 = time.perf_counter()
        correct[frac], _ = split_correctness(X[idx], y[idx], Xv, yv, "logreg", seed=seed)
        out[frac] = float(correct[frac].mean())
    return out, paired_split_gap(correct[1.0], correct[0.5]).to_dict(), time.perf_counter() - t0


def _finetune_curve(ds: Dataset, rows: AdviceRows, backbone: str, px: int, seed: int, device: str, progress: bool,
                    log) -> tuple:
    """``(Curve, rates)``: two short ``last:2`` fine-tunes on the advice subset, one epoch over half its training
    rows and one over all of them, validated on its validation rows; the throughput of the second."""
    import shutil
    import tempfile

    from transferlab.finetuning import finetune

    sub = rows.subset(ds)
    val = sub.splits["val"]
    # finetune reports a test accuracy: one validation row stands in (advise never reads the test split)
    data = Dataset(sub.spec, {**sub.splits, "test": val.take(np.arange(1), "test")}, sub.class_names, sub.fingerprint)
    points = []
    for n in (len(sub.splits["train"]) // 2, None):
        out = tempfile.mkdtemp(prefix="transferlab-advise-")
        try:
            m = finetune(data, backbone, mode=price.FINETUNE_MODE, epochs=1, image_size=px, seed=seed, augment=False,
                         max_train=n, device=device, out=out, progress=progress)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        points.append([m["n_train"], m["val_accuracy"], m["n_val"]])
    h = m["history"][0]
    rates = {"train": m["n_train"] / max(h["train_seconds"], 1e-9),
             "forward": m["n_val"] / max(h["seconds"] - h["train_seconds"], 1e-9)}
    log(f"short fine-tunes ({price.FINETUNE_MODE}, one epoch): " +
        ", ".join(f"{n} images -> val {a:.3f}" for n, a, _ in points))
    return price.Curve(points), rates


def _offers(decision, ds: Dataset, rows: AdviceRows, rates: dict, scratch_rates: dict | None, budget_s: float,
            curve, curve_how: str, fit_seconds: float, cached: bool) -> dict:
    """Each regime's :class:`~transferlab.pipeline.price.Offer` on the full data set: the probes' measured
    accuracy, the training regimes' expected gain over the probe regime, each one's time here."""
    f = decision.facts
    n_images = sum(len(s) for s in ds.splits.values())
    n_train, n_val = len(rows.train_idx), len(rows.val_idx)
    fits = fit_seconds * n_train / max(len(rows.keep_train), 1)  # a logreg fit grows with its rows
    how = f"measured, {f['curve_method']}" + (f", on {len(rows.keep_train)} of the {n_train} training rows"
                                             if len(rows.keep_train) < n_train else "")
    offers = {"linear-probe": price.probe_offer("linear-probe", f["last_layer"], f["last_val"],
                                                stderr(f["last_val"], f["n_val"]), how, n_images, rates["forward"],
                                                fits, cached)}
    layers = list(dict.fromkeys([f["peak_layer"], f["last_layer"]]))
    offers["generic-features"] = price.probe_offer("generic-features", f["peak_layer"], f["peak_val"],
                                                   stderr(f["peak_val"], f["n_val"]), how, n_images,
                                                   rates["forward"], 2 * len(layers) * fits, cached)
    base = offers[f.get("probe_regime") or "linear-probe"]
    offers["fine-tune"] = price.training_offer("fine-tune", price.epoch_seconds(n_train, n_val, rates), budget_s,
                                               n_train, base.expected_val, base.expected_se, curve, how=curve_how)
    if scratch_rates is not None:
        offers["from-scratch"] = price.training_offer(
            "from-scratch", price.epoch_seconds(n_train, n_val, scratch_rates), budget_s, n_train,
            base.expected_val, base.expected_se, how="not measured: training from random weights is not probed")
    return offers


def _priced(decision, ev: Evidence, ds: Dataset, rows: AdviceRows, spec: ExtractionSpec, bb, budget_s: float,
            finetune_probe, fit_seconds: float, record: dict, how: dict):
    """The decision within the budget (:func:`transferlab.pipeline.price.apply_budget`); ``record`` gets the rates,
    the offers, the short fine-tunes' curve and their seconds, and what a larger budget would change."""
    from transferlab.finetuning.run import pass_rates

    seed, device, log = how["seed"], how["device"], how["log"]
    px, n_classes = spec.image_size or bb.input_size, len(ds.class_names)
    batch = min(32, len(rows.keep_train))
    rates = pass_rates(spec.backbone, price.FINETUNE_MODE, n_classes, px, device=device, batch_size=batch, seed=seed)
    record["rates_from"] = (f"{2 * batch} synthetic images at {px} px, {price.FINETUNE_MODE}, "
                            + ("wall clock" if rates["clock"] == "wall" else
                               f"CPU time at one thread times {rates['threads']} (load {rates['load']:g} above the "
                               "core count: the wall clock would price other people's work)"))
    cost = price.epoch_seconds(1.5 * len(rows.keep_train), 2 * len(rows.keep_val), rates)
    large = ev.per_class_median >= LARGE_PER_CLASS
    run = finetune_probe is True or (finetune_probe == "auto" and large and cost <= price.PROBE_SHARE * budget_s)
    curve, curve_how = None, "not measured: no short fine-tune ran (--finetune-probe runs them)"
    if finetune_probe == "auto" and large and not run:
        curve_how = (f"not measured: the short fine-tunes (about {price.minutes(cost)}) exceed "
                     f"{price.PROBE_SHARE:g} of the budget")
    if run:
        t0 = time.perf_counter()
        curve, seen = _finetune_curve(ds, rows, spec.backbone, px, seed, device, how["progress"], log)
        # the prices keep the rates measured above, on one clock; the short fine-tunes' own wall-clock rates are
        # recorded beside them
        record.update(finetune_probe_seconds=round(time.perf_counter() - t0, 1), finetune_curve=curve.points,
                      finetune_probe_rates=seen)
        (n1, a1, _), (n2, a2, _) = curve.points[-2:]
        curve_how = f"extrapolated from one-epoch fine-tunes on {n1} and {n2} images, val {a1:.3f} and {a2:.3f}"
    scratch = None
    if "from-scratch" in (decision.strategy, decision.runner_up):
        scratch = pass_rates(spec.backbone, "scratch", n_classes, px, device=device, batch_size=batch, seed=seed,
                             clock=rates["clock"])
    cached = cached_extraction(ds, spec, "all", how["cache_dir"]) is not None
    offers = _offers(decision, ds, rows, rates, scratch, budget_s, curve, curve_how, fit_seconds, cached)
    decision, larger = price.apply_budget(decision, offers, budget_s)
    record.update(rates=rates, offers={r: o.to_dict() for r, o in offers.items()}, larger_budget=larger)
    return decision


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


def _next_command(strategy, data, backbone, image_size, decision, epochs=None) -> str:
    size = f" --image-size {image_size}"
    if strategy == "generic-features":
        layers = ",".join(dict.fromkeys([decision.facts.get("peak_layer"), decision.facts.get("last_layer")]))
        return f"transferlab sweep --data {data} --backbone {backbone}{size} --layers {layers} --heads logreg,svm"
    if strategy == "linear-probe":
        return (f"transferlab sweep --data {data} --backbone {backbone}{size} "
                f"--layers {decision.facts.get('last_layer')} --heads logreg")
    if strategy == "fine-tune":
        return (f"transferlab finetune --data {data} --backbone {backbone}{size} --mode {price.FINETUNE_MODE} "
                f"--epochs {epochs or price.FINETUNE_EPOCHS}")
    return (f"transferlab finetune --data {data} --backbone {backbone}{size} --mode scratch "
            f"--epochs {epochs or price.SCRATCH_EPOCHS}")


def advise(data, backbone: str = "lite0", image_size="auto", pool: str = "gap", seed: int = 0,
           max_train: int = 5000, max_val: int = 2000, val_fraction: float = 0.2, compare_random: bool = True,
           scores: bool = True, finetune_probe="auto", compare_size="auto", budget: float | None = None,
           cache_dir=None, device: str = "auto", progress: bool = False, log=None) -> Advice:
    """Measure the evidence and recommend one of the four regimes.

    Parameters
    ----------
    data : str or Dataset
        A data spec (``digits``, ``npz:PATH``, ``folder:PATH``).
    backbone : str
        ImageNet backbone (``lite0``, ``timm:NAME``, ``torchvision:NAME``); several, comma-separated: each one's
        advice and the pick among them (:func:`advise_backbones`).
    image_size : ``auto`` (the data's median shorter side, :func:`transferlab.features.spec.resolve_image_size`),
        pixels, or 0 (the backbone's own).
    pool : see :class:`transferlab.features.ExtractionSpec`.
    max_train, max_val : int
        Caps of the stratified subset measured on.
    compare_random : bool
        Also probe the same architecture with random weights (the pretrained-vs-random gap).
    scores : bool
        kNN accuracy and LogME per layer.
    finetune_probe : ``auto`` or bool
        Two short ``last:2`` fine-tunes on the subset (one epoch over half its training rows, one over all),
        the curve a fine-tune's expected gain is extrapolated from. ``auto``: when the data is large
        (:data:`~transferlab.pipeline.decision.LARGE_PER_CLASS`) and their estimated time is at most
        :data:`~transferlab.pipeline.price.PROBE_SHARE` of the budget. Their time is in ``seconds``.
    compare_size : ``auto``, pixels, or None
        A second input size at which the pretrained depth curve is measured on the same rows
        (:func:`other_size`); the advice is read at the better one
        (:func:`transferlab.pipeline.decision.choose_size`).
    budget : float, optional
        Minutes of this machine for the recommended regime (:func:`transferlab.pipeline.price.apply_budget`);
        None: :data:`~transferlab.pipeline.price.DEFAULT_BUDGET_MINUTES`, and the advice says it assumed it.

    Returns
    -------
    Advice
        ``strategy``, ``runner_up``, ``reasons``, the evidence, the thresholds, ``next_command``, the budget
        and ``price`` (each regime's offer, the rates, the fine-tune curve, what a larger budget would change).

    Examples
    --------
    >>> a = advise("digits")              # doctest: +SKIP
    >>> a.strategy                        # doctest: +SKIP
    'generic-features'
    """
    names = list(dict.fromkeys(b.strip() for b in str(backbone).split(",") if b.strip()))
    if len(names) > 1:
        args = {k: v for k, v in locals().items() if k not in ("data", "backbone", "names")}
        return advise_backbones(data, names, **args)
    started = time.perf_counter()
    log = log or (lambda m: print(m, file=sys.stderr))
    if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise UserInputError(f"--budget {budget}: a budget is a positive number of minutes (e.g. --budget 30)")
    budget_min = float(price.DEFAULT_BUDGET_MINUTES if budget is None else budget)
    budget_s = 60 * budget_min
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
                      round(time.perf_counter() - started, 1), budget_min, budget is None)
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
    # the measurements alternate numpy's and torch's small operations: numpy's BLAS threads, spinning between
    # calls, take the cores torch's threads want
    with _one_blas_thread():
        at = {}  # input size -> (feature rows, source logits, curve measurement)
        for px in sizes:
            source, logits = _measured_rows(ds, rows, ExtractionSpec(backbone, "imagenet", seed, px, pool),
                                            default_layers(bb.model) + extra, extra[0] if extra else None, **how)
            layers = list(read_cache_meta(source.path)["catalog"])
            log(f"pretrained, per layer (validation){f' at {px} px' if len(sizes) > 1 else ''}:")
            at[px] = (source, logits, measure_curve(source, layers, seed=seed, val_fraction=val_fraction,
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
        random_best = random_n = random_method = None
        if compare_random:
            rspec = ExtractionSpec(backbone, "random", seed, image_size, pool)
            rsource, _ = _measured_rows(ds, rows, rspec, "all", None, **how)
            log("random weights, per layer (validation):")
            rmeasured = measure_curve(rsource, layers, seed=seed, val_fraction=val_fraction, repeats=RANDOM_REPEATS,
                                      log=log)
            best = max(rmeasured.points, key=lambda p: p.val_accuracy)
            random_best, random_n, random_method = best.val_accuracy, best.n_val, rmeasured.method
        ev = Evidence(n_train=int(y.size), n_classes=int(classes.size), per_class_min=int(counts.min()),
                      per_class_median=float(np.median(counts)), curve=curve, random_best=random_best,
                      random_n_val=random_n, random_method=random_method, source_confidence=conf, source_entropy=ent,
                      peak_gap=measured.gap_record(), image_sizes=size_record, size_gap=size_gap)
        first = decide(ev)
        ev.learning_curve, ev.learning_gap, fit_seconds = _learning_curve(source, first.chosen_layer or layers[-1],
                                                                          seed, val_fraction)
    decision = decide(ev)
    record = {"budget_minutes": budget_min, "finetune_curve": None, "finetune_probe_seconds": 0.0}
    if decision.strategy is not None:
        decision = _priced(decision, ev, ds, rows, spec, bb, budget_s, finetune_probe, fit_seconds, record,
                           dict(seed=seed, device=device, progress=progress, cache_dir=cache_dir, log=log))
    epochs = (record.get("offers") or {}).get(decision.strategy, {}).get("epochs")
    dim, nbytes = bytes_per_image(source.path, measured.peak)
    candidate = Candidate(backbone, "imagenet", curve, measured, None, nbytes, source.path, dim)
    return Advice(decision.strategy, decision.runner_up, decision.close, decision.chosen_layer, decision.reasons,
                  ev.to_dict(), decision.facts, dict(THRESHOLDS),
                  _next_command(decision.strategy, ds.spec, backbone, spec.image_size, decision, epochs),
                  round(time.perf_counter() - started, 1), budget_min, budget is None, record, candidate=candidate)


def advise_backbones(data, backbones: list, **kwargs) -> Advice:
    """``advise --backbone a,b``: :func:`advise` for each backbone on the same rows, then the pick among them
    (:func:`transferlab.pipeline.backbone_choice.choose_backbone`: each at its peak layer, paired on those rows,
    a cheaper backbone that ties wins). Each backbone's advice is the one it gets alone (``auto`` resolves the
    input size within that backbone's own cap). Returns the pick's advice with ``backbones`` (each one's regime and
    its place in the comparison) and ``backbone_pick``; where no curve could be measured (too little data),
    the first backbone's advice, ``backbone_pick`` None."""
    log = kwargs.get("log") or (lambda m: print(m, file=sys.stderr))
    ds = load_dataset(data, seed=kwargs.get("seed", 0))
    advices = []
    for name in backbones:
        log(f"advise: backbone {name}")
        advices.append(advise(ds, name, **kwargs))
    if any(a.candidate is None for a in advices):
        return advices[0]
    cands = [a.candidate for a in advices]
    jobs = [(c.cache_file, [p.layer for p in c.points]) for c in cands]
    log(f"advise: timing the forward pass of {len(cands)} backbones for the extraction rate")
    sizes = [read_cache_meta(path)["image_size"] for path, _ in jobs]  # each backbone's own (auto: its own cap)
    for c, rate, px, (_, layers) in zip(cands, extraction_rates(jobs, kwargs.get("device", "auto")), sizes, jobs):
        c.images_per_s = rate
        c.rate_how = rate_how(len(layers), px, kwargs.get("device", "auto"))
    choice = choose_backbone(cands)
    records = [{"backbone": a.candidate.backbone, "strategy": a.strategy, "runner_up": a.runner_up, "close": a.close,
                "chosen_layer": a.chosen_layer, "next_command": a.next_command, "image_size": px, **rec}
               for a, px, rec in zip(advices, sizes, choice.pop("candidates"))]
    pick = next(a for a in advices if a.candidate.name == choice["pick"])
    pick.backbones, pick.backbone_pick = records, {"backbone": pick.candidate.backbone, **choice}
    pick.seconds = round(sum(a.seconds for a in advices), 1)
    return pick
