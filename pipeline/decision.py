"""The decision: which of the four transfer regimes fits a data set, from measured evidence.

The regimes (the lecture's quadrants):

``linear-probe``       small data, similar to the source: freeze the network, a classifier on its last layer
``generic-features``   small data, dissimilar: a classical head on an earlier, more generic layer
``fine-tune``          large data: train the network (or its last blocks) from the pretrained weights
``from-scratch``       large and very different: the source knowledge does not help, train from random

:func:`decide` is a pure function of an :class:`Evidence` record, shared by ``transferlab advise``
and the sweep's report. Every comparison is made on validation accuracy, never test, and against
its noise. The peak layer and the last layer are compared by a *paired* statistic on the same
rows (:mod:`transferlab.pipeline.evidence` measures it: repeated k-fold on small data, one split
otherwise); only where no paired gap was measured (rows of an old sweep) the unpaired binomial
error ``sqrt(p (1 - p) / n)`` of each accuracy is used, and the reasons say so. A gap of more than
:data:`Z` standard errors is real; up to :data:`CLOSE` below that line it is a close call, and a
close call between the two probe regimes falls back to the simpler one, the last layer. The
thresholds are module constants, printed with every recommendation; ``bench/advice.md`` holds the
calibration, where the measurement wins over the rule of thumb.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

REGIMES = ("linear-probe", "generic-features", "fine-tune", "from-scratch")

# images per class from which fine-tuning pays on a 2-core CPU budget (calibration: CIFAR-10 and
# MNIST with 5,000-6,000 per class are large, their 500-per-class subsets and digits are small)
LARGE_PER_CLASS = 2000
# how many standard errors of the difference make a gap real
Z = 2.0
# a peak-vs-last gap up to this many standard errors below Z is a close call: the last layer is kept
# (calibration: a band above Z as well sent digits, 3.4 points past its last layer, to the last layer
# at two seeds of three; bench/advice.md)
CLOSE = 1.0
# pretrained must beat random weights by this many points (and by Z standard errors) to "help"
MIN_SOURCE_GAIN = 0.02
# a probe whose validation accuracy still rises by this much from half to all training rows
# has not saturated (and by more than Z paired standard errors): more capacity (fine-tuning) is likely to pay
RISING = 0.01

THRESHOLDS = {"large_per_class": LARGE_PER_CLASS, "z": Z, "close": CLOSE, "min_source_gain": MIN_SOURCE_GAIN,
              "rising": RISING}


def stderr(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` rows (binomial)."""
    if n is None or n <= 0 or p is None or not math.isfinite(p):
        return float("nan")
    return math.sqrt(max(p * (1 - p), 1.0 / (4 * n)) / n)  # floor: never zero at p = 0 or 1


@dataclass
class LayerPoint:
    """One layer's validation evidence (pretrained weights unless stated)."""

    layer: str
    rel_depth: float
    val_accuracy: float
    n_val: int
    knn: float | None = None
    logme: float | None = None
    method: str = "split"  # "split" (one validation split) or "kfold RxK" (repeated k-fold on train+val)


@dataclass
class Evidence:
    """Everything :func:`decide` reads; missing items are None and simply not used."""

    n_train: int
    n_classes: int
    per_class_min: int
    per_class_median: float
    curve: list = field(default_factory=list)  # LayerPoint, forward order, pretrained weights
    random_best: float | None = None  # best validation accuracy with random weights
    random_n_val: int | None = None
    random_method: str | None = None  # how the random curve was measured ("split", "kfold 1x5")
    source_confidence: float | None = None  # mean max-softmax of the source classifier
    source_entropy: float | None = None  # mean entropy / log(n_source_classes)
    learning_curve: dict | None = None  # fraction of training rows -> validation accuracy at the chosen layer
    learning_gap: dict | None = None  # paired gap, all rows minus the previous fraction (Gap.to_dict())
    finetune_val: float | None = None  # a measured fine-tune's validation accuracy
    finetune_n_val: int | None = None
    finetune_budget: str | None = None  # what the fine-tune cost: mode, epochs, image size
    peak_gap: dict | None = None  # paired peak-minus-last gap: Gap.to_dict() with "peak" and "last"
    weights: str = "imagenet"
    # input sizes measured (advise, auto size): [{"size", "why", "peak", "peak_val", "last", "last_val"}],
    # the one measured first (the data's own) first; the paired gap of the other's peak over the first's
    image_sizes: list | None = None
    size_gap: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decision:
    strategy: str | None  # None: no transfer regime can be named (no pretrained curve)
    runner_up: str | None
    close: bool
    chosen_layer: str | None
    reasons: list
    facts: dict
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))

    def to_dict(self) -> dict:
        return asdict(self)


def curve_facts(curve: list, peak_gap: dict | None = None) -> dict:
    """Peak (best validation) layer, last layer, their gap and its noise (paired when ``peak_gap`` is given)."""
    if not curve:
        return {}
    peak = max(curve, key=lambda p: (p.val_accuracy, p.rel_depth))  # ties: the deeper layer
    last = max(curve, key=lambda p: p.rel_depth)
    gap = peak.val_accuracy - last.val_accuracy
    if peak_gap and peak_gap.get("peak") == peak.layer and peak_gap.get("last") == last.layer:
        se, method = float(peak_gap["se"]), f"paired, {peak_gap['method']}"
    else:
        se = math.hypot(stderr(peak.val_accuracy, peak.n_val), stderr(last.val_accuracy, last.n_val))
        method = "unpaired"
    return {"peak_layer": peak.layer, "peak_rel_depth": peak.rel_depth, "peak_val": peak.val_accuracy,
            "last_layer": last.layer, "last_val": last.val_accuracy, "last_gap": gap, "gap_se": se,
            "gap_in_se": gap / se if se > 0 else float("inf") if gap > 0 else 0.0, "n_val": peak.n_val,
            "gap_method": method, "curve_method": peak.method}


def _curve_reason(cf: dict, generic_better: bool, close: bool) -> str:
    if cf["peak_layer"] == cf["last_layer"] or cf["last_gap"] <= 0:
        return (f"validation accuracy peaks at the last layer `{cf['last_layer']}` "
                f"({cf['last_val']:.3f}, {cf['curve_method']})")
    verdict = ("more than" if generic_better else "close to" if close else "within") + f" {Z:g} standard errors"
    return (f"validation accuracy peaks at `{cf['peak_layer']}` (relative depth {cf['peak_rel_depth']:.2f}, "
            f"{cf['peak_val']:.3f}); the last layer `{cf['last_layer']}` trails by {100 * cf['last_gap']:.1f} points, "
            f"{cf['gap_in_se']:.1f} standard errors of the difference ({100 * cf['gap_se']:.1f} points, "
            f"{cf['gap_method']}; {cf['curve_method']} on {cf['n_val']} rows): {verdict}")


def choose_size(sizes: list, gap: dict | None) -> tuple[int, str]:
    """``(size, reason)``: which input size the evidence is read at.

    ``sizes[0]`` is the data's own size (``auto``), ``sizes[1]`` the other measured one and ``gap`` the
    paired difference of the other's peak over the first's (:class:`transferlab.classifiers.compare.Gap`
    as a dict). The other size is taken only when it is better by more than :data:`Z` standard
    errors; otherwise the data's own size stays (nothing discarded, and what the sweep runs by default).
    """
    own = sizes[0]
    if len(sizes) < 2 or gap is None:
        return own["size"], f"input size {own['size']} px ({own['why']}); one size measured"
    other = sizes[1]
    z = gap["in_se"]
    at = lambda s: f"{s['size']} px: `{s['peak']}` {s['peak_val']:.3f}, last layer {s['last_val']:.3f}"  # noqa: E731
    measured = (f"measured at two input sizes ({at(own)}; {at(other)}); {other['size']} px minus {own['size']} px at "
                f"their best layers {100 * gap['difference']:+.1f} points, {z:.1f} standard errors "
                f"(paired, {gap['method']})")
    if z > Z:
        return other["size"], f"{measured}: {other['size']} px is better beyond the noise, the advice is read there"
    return own["size"], (f"{measured}: not better by more than {Z:g} standard errors, so the data's own size "
                         f"{own['size']} px ({own['why']}) stays")


def decide(ev: Evidence) -> Decision:
    """Name the regime, the runner-up and the reasons, from the evidence alone."""
    reasons, facts = [], {"n_train": ev.n_train, "n_classes": ev.n_classes, "per_class_median": ev.per_class_median}
    if ev.image_sizes:
        facts["image_size"], why = choose_size(ev.image_sizes, ev.size_gap)
        reasons.append(why)
    cf = curve_facts(ev.curve, ev.peak_gap)
    facts.update(cf)
    large = ev.per_class_median >= LARGE_PER_CLASS
    reasons.append(f"{ev.per_class_median:.0f} training images per class (median) is "
                   f"{'large' if large else 'small'} (threshold {LARGE_PER_CLASS})")
    pretrained = ev.weights == "imagenet"
    generic_better, gap_close = False, False
    if cf:
        z = cf["gap_in_se"] if cf["last_gap"] > 0 else 0.0
        generic_better = z > Z  # a real gap
        gap_close = Z - CLOSE < z <= Z
        reasons.append(_curve_reason(cf, generic_better, gap_close))
        if gap_close:
            reasons.append(f"a close call between `{cf['peak_layer']}` and the last layer (up to {CLOSE:g} below "
                           f"{Z:g} standard errors): the simpler answer, the last layer, is kept")
        if any(p.knn is not None or p.logme is not None for p in ev.curve):
            reasons.append("kNN accuracy and LogME are shown for reference: they estimate without training what "
                           "the probe measures, so the probe's validation accuracy decides")
    source_helps = None
    if ev.random_best is not None and cf and pretrained:  # random against random says nothing about transfer
        gain = cf["peak_val"] - ev.random_best
        se = math.hypot(stderr(cf["peak_val"], cf["n_val"]), stderr(ev.random_best, ev.random_n_val or cf["n_val"]))
        source_helps = gain > max(MIN_SOURCE_GAIN, Z * se)
        facts.update(random_best=ev.random_best, source_gain=gain, source_gain_se=se)
        reasons.append(f"pretrained beats random weights by {100 * gain:.1f} points at their best layers "
                       + ("(the source knowledge helps)" if source_helps else
                          f"(within noise or under {int(100 * MIN_SOURCE_GAIN)} points: "
                          f"little source knowledge carries over)"))
    if ev.source_confidence is not None:
        facts.update(source_confidence=ev.source_confidence, source_entropy=ev.source_entropy)
        reasons.append(f"the source classifier's mean top-1 confidence on these images is "
                       f"{ev.source_confidence:.2f} (normalised entropy {ev.source_entropy:.2f})")
    rising = _rising(ev, facts, reasons)
    finetune_lost, finetune_won = None, None
    if ev.finetune_val is not None and cf:
        ft_se = math.hypot(stderr(ev.finetune_val, ev.finetune_n_val or cf["n_val"]),
                           stderr(cf["peak_val"], cf["n_val"]))
        facts.update(finetune_val=ev.finetune_val, finetune_se=ft_se, finetune_budget=ev.finetune_budget)
        finetune_won = ev.finetune_val > cf["peak_val"] + Z * ft_se
        finetune_lost = ev.finetune_val < cf["peak_val"] - Z * ft_se
        budget = f" ({ev.finetune_budget})" if ev.finetune_budget else ""
        reasons.append(f"a measured fine-tune{budget} reached {ev.finetune_val:.3f} validation accuracy against the "
                       f"probe's {cf['peak_val']:.3f} ({'more than' if finetune_won or finetune_lost else 'within'} "
                       f"{Z:g} standard errors, unpaired)")

    probe = ("generic-features", "linear-probe") if generic_better else ("linear-probe", "generic-features")
    facts["probe_regime"] = probe[0]  # what a training regime is weighed against (pipeline/price.py)
    if not pretrained:
        reasons.append("the weights are not ImageNet's: the curve describes the architecture, not the transfer; "
                       "no transfer regime can be named from these rows (add --weights imagenet)")
        chosen = cf.get("peak_layer") if generic_better else cf.get("last_layer")
        return Decision(None, None, False, chosen, reasons, facts)
    if large:
        gain = facts.get("source_gain")
        if source_helps is False:
            strategy, runner_up = "from-scratch", "fine-tune"
            close = gain is not None and gain > MIN_SOURCE_GAIN / 2
            reasons.append("large data, and the pretrained features barely beat random ones: train from scratch")
        elif finetune_lost:
            (strategy, _), runner_up, close = probe, "fine-tune", False
            reasons.append("large data, but the measured fine-tune lost to the probe at its budget: the probe is "
                           "the answer at that budget (more epochs may change it)")
        else:
            strategy = "fine-tune"
            small_gain = gain is not None and gain < 2 * MIN_SOURCE_GAIN
            runner_up = "from-scratch" if small_gain else probe[0]
            close = small_gain or rising is False
            reasons.append("large data: fine-tuning from the pretrained weights can use it"
                           + ("" if source_helps else " (random weights not measured)"))
    else:
        (strategy, runner_up), close = probe, gap_close
        if rising and ev.per_class_median >= LARGE_PER_CLASS / 4:
            if gap_close:  # the close call names both probe regimes; fine-tuning comes after them
                reasons.append("the probe has not saturated: fine-tuning comes after the close call's two layers")
            else:
                runner_up = "fine-tune"
                reasons.append("the probe has not saturated, so fine-tuning is the runner-up")
        if finetune_won:
            strategy, runner_up, close = "fine-tune", strategy, False
            reasons.append("the measured fine-tune beats the probe by more than the noise: that measurement wins")
    if ev.per_class_min < 2:
        reasons.append("warning: a class has fewer than 2 training images: nothing can be chosen on data; "
                       "the recommendation falls back to the linear probe")
        strategy, runner_up, close = "linear-probe", "generic-features", True
    chosen = cf.get("peak_layer") if strategy == "generic-features" else cf.get("last_layer")
    return Decision(strategy, runner_up, bool(close), chosen, reasons, facts)


def _rising(ev: Evidence, facts: dict, reasons: list) -> bool | None:
    """Whether the probe's learning curve still rises: by more than RISING and, when paired, Z standard errors."""
    if not ev.learning_curve:
        return None
    fr = sorted(ev.learning_curve, key=float)
    if len(fr) < 2:
        reasons.append("one learning-curve point only")
        return None
    rise = ev.learning_curve[fr[-1]] - ev.learning_curve[fr[-2]]
    facts["learning_curve_rise"] = rise
    noise = ""
    rising = rise > RISING
    if ev.learning_gap:
        se = float(ev.learning_gap["se"])
        facts["learning_curve_rise_se"] = se
        rising = rising and rise > Z * se
        noise = f", {rise / se if se > 0 else float('inf'):.1f} paired standard errors"
    reasons.append(f"the probe's validation accuracy {'still rises' if rising else 'has levelled off'} "
                   f"from {100 * float(fr[-2]):.0f}% to {100 * float(fr[-1]):.0f}% of the training rows "
                   f"({100 * rise:+.1f} points{noise})")
    return rising
