"""The decision: which of the four transfer regimes fits a data set, from measured evidence.

The regimes (the lecture's quadrants):

``linear-probe``       small data, similar to the source: freeze the network, a classifier on its last layer
``generic-features``   small data, dissimilar: a classical head on an earlier, more generic layer
``fine-tune``          large data: train the network (or its last blocks) from the pretrained weights
``from-scratch``       large and very different: the source knowledge does not help, train from random

:func:`decide` is a pure function of an :class:`Evidence` record, shared by ``transferlab advise``
and the sweep's report. Every comparison is made on validation accuracy, never test, and against
its noise: the standard error of an accuracy ``p`` on ``n`` validation rows is
``sqrt(p (1 - p) / n)``, and a difference counts only when it exceeds :data:`Z` standard errors of
the difference. The thresholds are module constants, printed with every recommendation; they
were calibrated on digits, MNIST and CIFAR-10 (``bench/advice.md``), where the measurement wins
over the rule of thumb.
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
# pretrained must beat random weights by this many points (and by Z standard errors) to "help"
MIN_SOURCE_GAIN = 0.02
# a probe whose validation accuracy still rises by this much from half to all training rows
# has not saturated: more capacity (fine-tuning) is likely to pay
RISING = 0.01

THRESHOLDS = {"large_per_class": LARGE_PER_CLASS, "z": Z, "min_source_gain": MIN_SOURCE_GAIN, "rising": RISING}


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
    source_confidence: float | None = None  # mean max-softmax of the source classifier
    source_entropy: float | None = None  # mean entropy / log(n_source_classes)
    learning_curve: dict | None = None  # fraction of training rows -> validation accuracy at the chosen layer
    finetune_val: float | None = None  # optional short fine-tune, validation accuracy
    weights: str = "imagenet"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decision:
    strategy: str
    runner_up: str
    close: bool
    chosen_layer: str | None
    reasons: list
    facts: dict
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))

    def to_dict(self) -> dict:
        return asdict(self)


def curve_facts(curve: list) -> dict:
    """Peak (best validation) layer, last layer, their gap and its noise."""
    if not curve:
        return {}
    peak = max(curve, key=lambda p: (p.val_accuracy, p.rel_depth))  # ties: the deeper layer
    last = max(curve, key=lambda p: p.rel_depth)
    se = math.hypot(stderr(peak.val_accuracy, peak.n_val), stderr(last.val_accuracy, last.n_val))
    gap = peak.val_accuracy - last.val_accuracy
    return {"peak_layer": peak.layer, "peak_rel_depth": peak.rel_depth, "peak_val": peak.val_accuracy,
            "last_layer": last.layer, "last_val": last.val_accuracy, "last_gap": gap, "gap_se": se,
            "gap_in_se": gap / se if se > 0 else float("inf") if gap > 0 else 0.0, "n_val": peak.n_val}


def decide(ev: Evidence) -> Decision:
    """Name the regime, the runner-up and the reasons, from the evidence alone."""
    reasons, facts = [], {"n_train": ev.n_train, "n_classes": ev.n_classes, "per_class_median": ev.per_class_median}
    cf = curve_facts(ev.curve)
    facts.update(cf)
    large = ev.per_class_median >= LARGE_PER_CLASS
    reasons.append(f"{ev.per_class_median:.0f} training images per class (median) is "
                   f"{'large' if large else 'small'} (threshold {LARGE_PER_CLASS})")
    pretrained = ev.weights == "imagenet"
    generic_better, gap_close = False, False
    if cf:
        z = cf["gap_in_se"]
        generic_better = z > Z
        gap_close = 1.0 < z <= Z or (generic_better and z <= Z + 1)
        if cf["peak_layer"] == cf["last_layer"] or cf["last_gap"] <= 0:
            reasons.append(f"validation accuracy peaks at the last layer `{cf['last_layer']}` ({cf['last_val']:.3f})")
        else:
            verdict = "more than" if generic_better else "within"
            reasons.append(f"validation accuracy peaks at `{cf['peak_layer']}` (relative depth "
                           f"{cf['peak_rel_depth']:.2f}, {cf['peak_val']:.3f}); the last layer `{cf['last_layer']}` "
                           f"trails by {100 * cf['last_gap']:.1f} points, {verdict} {Z:g} standard errors "
                           f"({100 * cf['gap_se']:.1f} points at n_val={cf['n_val']})")
    source_helps = None
    if ev.random_best is not None and cf and pretrained:  # random against random says nothing about transfer
        gain = cf["peak_val"] - ev.random_best
        se = math.hypot(stderr(cf["peak_val"], cf["n_val"]), stderr(ev.random_best, ev.random_n_val or cf["n_val"]))
        source_helps = gain > max(MIN_SOURCE_GAIN, Z * se)
        facts.update(random_best=ev.random_best, source_gain=gain, source_gain_se=se)
        reasons.append(f"pretrained beats random weights by {100 * gain:.1f} points at their best layers "
                       f"({'the source knowledge helps' if source_helps else 'within noise or under ' + str(int(100 * MIN_SOURCE_GAIN)) + ' points: little source knowledge carries over'})")
    if ev.source_confidence is not None:
        facts.update(source_confidence=ev.source_confidence, source_entropy=ev.source_entropy)
        reasons.append(f"the source classifier's mean top-1 confidence on these images is "
                       f"{ev.source_confidence:.2f} (normalised entropy {ev.source_entropy:.2f})")
    rising = None
    if ev.learning_curve:
        fr = sorted(ev.learning_curve)
        rise = ev.learning_curve[fr[-1]] - ev.learning_curve[fr[-2]] if len(fr) > 1 else 0.0
        rising = rise > RISING
        facts["learning_curve_rise"] = rise
        reasons.append(f"the probe's validation accuracy {'still rises' if rising else 'has levelled off'} "
                       f"from {100 * fr[-2]:.0f}% to {100 * fr[-1]:.0f}% of the training rows "
                       f"({100 * rise:+.1f} points)" if len(fr) > 1 else "one learning-curve point only")
    if ev.finetune_val is not None and cf:
        facts["finetune_val"] = ev.finetune_val
        reasons.append(f"a short fine-tune reached {ev.finetune_val:.3f} validation accuracy against the probe's "
                       f"{cf['peak_val']:.3f}")

    if not pretrained:
        reasons.append("the weights are not ImageNet's: the curve describes the architecture, not the transfer")
    if large:
        gain = facts.get("source_gain")
        if source_helps is False:
            strategy, runner_up = "from-scratch", "fine-tune"
            close = gain is not None and gain > MIN_SOURCE_GAIN / 2
            reasons.append("large data, and the pretrained features barely beat random ones: train from scratch")
        else:
            strategy = "fine-tune"
            small_gain = gain is not None and gain < 2 * MIN_SOURCE_GAIN
            runner_up = "from-scratch" if small_gain else ("generic-features" if generic_better else "linear-probe")
            close = small_gain or rising is False
            reasons.append("large data: fine-tuning from the pretrained weights can use it"
                           + ("" if source_helps else " (random weights not measured)"))
    else:
        if generic_better:
            strategy, runner_up = "generic-features", "linear-probe"
        else:
            strategy, runner_up = "linear-probe", "generic-features"
        close = gap_close
        if rising and ev.per_class_median >= LARGE_PER_CLASS / 4:
            runner_up = "fine-tune"
            reasons.append("the probe has not saturated, so fine-tuning is the runner-up")
        if ev.finetune_val is not None and cf and ev.finetune_val > cf["peak_val"] + Z * cf["gap_se"]:
            strategy, runner_up, close = "fine-tune", strategy, False
            reasons.append("the measured fine-tune beats the probe by more than the noise: that measurement wins")
    if ev.per_class_min < 2:
        reasons.append("warning: a class has fewer than 2 training images: nothing can be chosen on data; "
                       "the recommendation falls back to the linear probe")
        strategy, runner_up, close = "linear-probe", "generic-features", True
    chosen = cf.get("peak_layer") if strategy == "generic-features" else cf.get("last_layer")
    if strategy == "linear-probe" and cf and cf.get("last_gap", 0) > 0:
        chosen = cf["last_layer"]
    return Decision(strategy, runner_up, bool(close), chosen, reasons, facts)
