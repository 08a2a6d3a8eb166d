"""The price of the advice: what each regime is expected to gain over the probe, what it costs on this machine,
and the budget rule that drops a regime whose gain does not arrive within the budget.

Times are images times epochs over a throughput measured here (:func:`transferlab.finetuning.run.pass_rates`,
or the short fine-tunes of ``advise``'s fine-tune probe). A probe's expected accuracy is its measured
validation accuracy; a fine-tune's is extrapolated from two short measured fine-tunes (one epoch over
half the advice subset and over all of it) by :class:`Curve`, with its uncertainty. The rule
(:func:`apply_budget`) is a pure function of the decision and the offers; without ``--budget``
the advice assumes :data:`DEFAULT_BUDGET_MINUTES` and says so. ``bench/advice.md`` holds the calibration.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .decision import Z

DEFAULT_BUDGET_MINUTES = 60.0  # the budget advise assumes without --budget: an hour of this machine
ASSUMED_BUDGET = f"{DEFAULT_BUDGET_MINUTES:g} minutes, assumed and said"  # that default as --help words it
FINETUNE_MODE = "last:2"
FINETUNE_EPOCHS = 10  # the fine-tune the advice names, when the budget allows all of it
SCRATCH_EPOCHS = 30
# from-scratch has no short curve: it is recommended only where at least this many epochs fit the budget
# (bench/advice.md: one to five epochs of it never beat the probe, e.g. permuted CIFAR-10 at one epoch)
SCRATCH_MIN_EPOCHS = 10
# the fine-tune probe runs by itself on large data when its estimated cost is at most this share of the budget
PROBE_SHARE = 0.25
# accuracy against images seen, a - b * images ** -alpha: the middle exponent gives the estimate, the spread
# over all three (and the validation noise of both points) its uncertainty
EXPONENTS = (0.25, 0.5, 1.0)
DRAWS = 400  # noise draws per exponent (seeded: the same points give the same uncertainty)
PROBES = ("linear-probe", "generic-features")
TRAINED = {"fine-tune": FINETUNE_MODE, "from-scratch": "scratch"}


def minutes(seconds: float) -> str:
    """A time in words: seconds under 90 s, minutes under 90 min, else hours (``'40 s'``, ``'26 min'``)."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


@dataclass
class Curve:
    """Validation accuracy of short fine-tunes against the training images each saw.

    ``points``: ``[images_seen, val_accuracy, n_val]``, two or more, fewest images first. The model
    is an inverse power law ``acc = a - b * images ** -alpha`` through the last two points (``b`` at
    least 0: a curve that fell is read as flat), capped at 1."""

    points: list

    def _fit(self, a1: float, a2: float, alpha: float):
        (s1, _, _), (s2, _, _) = self.points[-2], self.points[-1]
        b = max((a2 - a1) / (s1 ** -alpha - s2 ** -alpha), 0.0)
        return a2 + b * s2 ** -alpha, b

    def at(self, images: float, alpha: float = EXPONENTS[1], a1: float | None = None, a2: float | None = None):
        (_, p1, _), (_, p2, _) = self.points[-2], self.points[-1]
        a, b = self._fit(p1 if a1 is None else a1, p2 if a2 is None else a2, alpha)
        return min(a - b * float(images) ** -alpha, 1.0)

    def expected(self, images: float) -> tuple[float, float]:
        """``(accuracy, standard error)`` after ``images`` training images seen: the estimate at the middle
        exponent; the error the root mean square, around it, of the curve through points redrawn within
        their binomial noise, at each exponent of :data:`EXPONENTS`."""
        (_, p1, n1), (_, p2, n2) = self.points[-2], self.points[-1]
        rng = np.random.default_rng(0)
        se1, se2 = (math.sqrt(max(p * (1 - p), 0.25 / n) / n) for p, n in ((p1, n1), (p2, n2)))
        est = self.at(images)
        draws = [self.at(images, alpha, a1, a2) for alpha in EXPONENTS
                 for a1, a2 in zip(rng.normal(p1, se1, DRAWS), rng.normal(p2, se2, DRAWS))]
        return est, float(np.sqrt(np.mean((np.asarray(draws) - est) ** 2)))

    def limit(self) -> float:
        """The curve's plateau (images without end) at the middle exponent."""
        (_, p1, _), (_, p2, _) = self.points[-2], self.points[-1]
        return min(self._fit(p1, p2, EXPONENTS[1])[0], 1.0)


def epoch_seconds(n_train: int, n_val: int, rates: dict) -> float:
    """One epoch here: the training pass over ``n_train`` images and the validation pass over ``n_val``."""
    return n_train / rates["train"] + n_val / rates["forward"]


@dataclass
class Offer:
    """One regime's price and expected gain, as the advice states it."""

    regime: str
    detail: str  # what runs: "logreg on `blocks.5`", "last:2, 4 epochs"
    seconds: float  # wall time here for what the next command runs (training regimes: ``epochs`` epochs)
    expected_val: float | None  # expected validation accuracy, None: not measured
    expected_se: float | None
    how: str  # "measured ...", "extrapolated ...", "not measured ..."
    gain: float | None = None  # over the probe, points as a fraction
    gain_se: float | None = None
    epochs: int | None = None  # training regimes: the epochs that fit the budget (at most the named ones)
    fits: bool = True  # training regimes: at least min_epochs fit the budget
    min_epochs: int = 1  # the fewest epochs worth running (an unmeasured from-scratch: SCRATCH_MIN_EPOCHS)
    epoch_seconds: float | None = None
    full_epochs: int | None = None  # the epochs the advice names when the budget allows
    full_gain: float | None = None  # the expected gain after full_epochs
    pass_epochs: int | None = None  # fewest epochs expected to pass the probe (None: never, or no curve)
    plateau: float | None = None  # the curve's plateau, where measured
    notes: list = field(default_factory=list)

    @property
    def pays(self) -> bool:
        """A training regime pays when its fewest epochs worth running fit the budget and its expected gain
        (where measured) is positive."""
        return self.fits and (self.gain is None or self.gain > 0)

    def line(self) -> str:
        """``fine-tune last:2: expected +2.1 +- 1.4 points over the probe after 4 epochs (how), about 26 min here``."""
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        when = f" after {epochs}" if self.epochs else ""
        if self.regime in PROBES:
            what = f"expected {self.expected_val:.3f} +- {self.expected_se:.3f} validation ({self.how})"
        elif self.gain is not None:
            what = (f"expected {100 * self.gain:+.1f} +- {100 * self.gain_se:.1f} points over the probe{when} "
                    f"({self.how})")
        else:
            what = f"expected gain over the probe {self.how}" + (f"; {epochs}" if self.fits else "")
        cost = f"about {minutes(self.seconds)} here" if self.fits else \
            f"{self.least()} about {minutes(self.min_epochs * self.epoch_seconds)} here, more than the budget"
        return f"{self.regime} {self.detail}: {what}, {cost}" + "".join(f"; {n}" for n in self.notes)

    def least(self) -> str:
        """``'one epoch alone takes'`` or ``'the 10 epochs worth running take'``."""
        return "one epoch alone takes" if self.min_epochs == 1 else f"the {self.min_epochs} epochs worth running take"

    def to_dict(self) -> dict:
        return {**asdict(self), "line": self.line()}


def probe_offer(regime: str, layer: str, val: float, se: float, how: str, n_images: int, forward_rate: float,
                fit_seconds: float, cached: bool) -> Offer:
    """A probe regime's offer: its measured validation accuracy; its time the forward pass over every image
    (none when the data's cache file is complete) and the head fits."""
    extract = 0.0 if cached else n_images / forward_rate
    note = "features already cached" if cached else \
        f"extraction of {n_images} images at {forward_rate:.0f} img/s and the head fits"
    return Offer(regime, f"(logreg on `{layer}`)", extract + fit_seconds, val, se, how, notes=[note])


def training_offer(regime: str, per_epoch: float, budget_s: float, images_per_epoch: int, probe_val: float,
                   probe_se: float, curve: Curve | None = None, full_epochs: int | None = None,
                   how: str = "") -> Offer:
    """A training regime's offer within ``budget_s``: as many epochs as fit, at most ``full_epochs`` (the
    regime's named epochs); the expected accuracy from ``curve`` at ``epochs * images_per_epoch`` images
    seen, and the fewest epochs expected to pass the probe."""
    full = full_epochs or (FINETUNE_EPOCHS if regime == "fine-tune" else SCRATCH_EPOCHS)
    epochs = min(full, int(budget_s // per_epoch))
    least = min(SCRATCH_MIN_EPOCHS, full) if regime == "from-scratch" and curve is None else 1
    o = Offer(regime, TRAINED[regime], max(epochs, least) * per_epoch, None, None,
              how or ("extrapolated from short fine-tunes" if curve else "not measured: no short fine-tune ran"),
              epochs=max(epochs, least), fits=epochs >= least, min_epochs=least,
              epoch_seconds=per_epoch, full_epochs=full)
    if curve is None:
        return o
    o.expected_val, o.expected_se = curve.expected(o.epochs * images_per_epoch)
    o.gain, o.gain_se = o.expected_val - probe_val, math.hypot(o.expected_se, probe_se)
    o.full_gain = curve.expected(full * images_per_epoch)[0] - probe_val
    o.plateau = curve.limit()
    o.pass_epochs = next((e for e in range(1, 1001) if curve.at(e * images_per_epoch) > probe_val), None)
    return o


def apply_budget(decision, offers: dict, budget_s: float):
    """``(decision, larger)``: the decision within the budget, and what a larger budget would change (a sentence).

    A training regime (``fine-tune``, ``from-scratch``) that does not pay within the budget
    (:attr:`Offer.pays`: its fewest epochs worth running do not fit, or its expected gain over the
    probe after the epochs that fit is not positive) is not recommended: the next of strategy, runner-up and the probe
    regime that pays is (in place of a dropped regime, a training regime whose expected gain is within
    :data:`~transferlab.pipeline.decision.Z` standard errors of none does not: the probe is), and the
    first dropped one becomes the runner-up. A fine-tune whose expected
    gain within the budget exceeds :data:`~transferlab.pipeline.decision.Z` standard errors is
    recommended over a probe (a measurement wins). A decision with no offers, or no regime named, is
    returned as it is."""
    if decision.strategy is None or not offers:
        return decision, ""
    facts = decision.facts
    probe = facts.get("probe_regime") or "linear-probe"
    strategy, runner_up, close = decision.strategy, decision.runner_up, decision.close
    reasons = [f"the budget: {minutes(budget_s)} of this machine for the recommended regime"]
    ft = offers.get("fine-tune")
    if strategy in PROBES and ft is not None and ft.fits and ft.gain is not None and ft.gain > Z * ft.gain_se:
        reasons.append(f"the short fine-tunes extrapolate to {100 * ft.gain:+.1f} +- {100 * ft.gain_se:.1f} points "
                       f"over the probe after {ft.epochs} epochs, more than {Z:g} standard errors: fine-tune")
        strategy, runner_up, close = "fine-tune", strategy, False
    dropped = []
    for regime in dict.fromkeys([strategy, runner_up, probe]):
        o = offers.get(regime)
        if regime in PROBES or o is None:
            break
        # in place of a dropped regime, a training regime needs a gain beyond the noise, as the upgrade above
        noisy = dropped and o.pays and o.gain is not None and not o.gain > Z * o.gain_se
        if o.pays and not noisy:
            break
        dropped.append(o)
        reasons.append(f"{regime} {o.detail} is not recommended within the budget: " + (
            f"{o.least().replace(' alone', '')} about {minutes(o.min_epochs * o.epoch_seconds)} here" if not o.fits else
            f"its expected gain after {o.epochs} epochs is {100 * o.gain:+.1f} +- {100 * o.gain_se:.1f} points"
            + (f", within {Z:g} standard errors of none: the probe" if noisy else "")))
    if dropped:
        strategy, runner_up = regime, dropped[0].regime
        g = dropped[0]
        close = g.gain is not None and g.fits and abs(g.gain) <= Z * g.gain_se
        if close:
            reasons.append(f"a close call: {g.regime}'s expected gain is within {Z:g} standard errors of none")
    chosen = facts.get("peak_layer") if strategy == "generic-features" else facts.get("last_layer")
    out = replace(decision, strategy=strategy, runner_up=runner_up, close=bool(close), chosen_layer=chosen,
                  reasons=list(decision.reasons) + reasons)
    return out, larger_budget(strategy, runner_up, offers, budget_s)


def larger_budget(strategy: str, runner_up: str | None, offers: dict, budget_s: float) -> str:
    """The sentence on what a larger budget would change: for the recommended regime, the runner-up and any
    training regime offered."""
    said = []
    for regime in dict.fromkeys([strategy, runner_up, *TRAINED]):
        o = offers.get(regime)
        if o is None or regime in PROBES:
            continue
        name = f"{regime} {o.detail}"
        if not o.fits:
            said.append(f"{minutes(o.min_epochs * o.epoch_seconds)} buys "
                        f"{'one epoch' if o.min_epochs == 1 else f'the {o.min_epochs} epochs worth running'} of {name}"
                        + (f"; it is expected to pass the probe after {o.pass_epochs} epochs "
                           f"(about {minutes(o.pass_epochs * o.epoch_seconds)})" if o.pass_epochs else ""))
        elif o.gain is not None and o.gain <= 0:
            said.append(f"{name} is expected to pass the probe after {o.pass_epochs} epochs: a budget of about "
                        f"{minutes(o.pass_epochs * o.epoch_seconds)} would recommend it" if o.pass_epochs else
                        f"{name} levels off at {o.plateau:.3f} on the short fine-tunes' curve, under the probe: "
                        f"no budget is expected to make it pay")
        elif o.epochs < o.full_epochs:
            gain = "" if o.full_gain is None else f", expected {100 * o.full_gain:+.1f} points over the probe"
            said.append(f"about {minutes(o.full_epochs * o.epoch_seconds)} would run all {o.full_epochs} epochs "
                        f"of {name}{gain}")
    if not said:
        return f"a larger budget than {minutes(budget_s)} changes nothing here: the recommendation runs whole within it"
    return "a larger budget: " + "; ".join(said)
