"""The price of the advice on synthetic evidence: the fine-tune curve's extrapolation and its noise, the offers,
and the budget rule (issue 25: the answer depends on a budget the advice never stated)."""
import math

import pytest

from transferlab.pipeline.decision import LARGE_PER_CLASS, Evidence, LayerPoint, Z, decide, stderr
from transferlab.pipeline.price import (
    FINETUNE_EPOCHS,
    SCRATCH_MIN_EPOCHS,
    Curve,
    apply_budget,
    epoch_seconds,
    probe_offer,
    training_offer,
)

N_VAL = 2000
PER_EPOCH = 60.0  # seconds of one fine-tune epoch, synthetic


def _power(a, b, alpha=0.5):
    return lambda s: a - b * s ** -alpha


def _curve(truth, s1=2500, s2=5000, n_val=N_VAL):
    return Curve([[s1, truth(s1), n_val], [s2, truth(s2), n_val]])


def _ev(per_class, vals, random_best=0.45):
    curve = [LayerPoint(f"l{i}", i / (len(vals) - 1), v, N_VAL) for i, v in enumerate(vals)]
    return Evidence(n_train=per_class * 10, n_classes=10, per_class_min=per_class, per_class_median=per_class,
                    curve=curve, random_best=random_best, random_n_val=N_VAL)


def _offers(decision, curve=None, per_epoch=PER_EPOCH, budget_s=3600, scratch_epoch=None):
    f = decision.facts
    n_train = decision.facts["n_train"]
    lp = probe_offer("linear-probe", f["last_layer"], f["last_val"], stderr(f["last_val"], N_VAL), "measured",
                     n_train, 500.0, 1.0, False)
    gf = probe_offer("generic-features", f["peak_layer"], f["peak_val"], stderr(f["peak_val"], N_VAL), "measured",
                     n_train, 500.0, 4.0, False)
    base = gf if f["probe_regime"] == "generic-features" else lp
    offers = {"linear-probe": lp, "generic-features": gf,
              "fine-tune": training_offer("fine-tune", per_epoch, budget_s, n_train, base.expected_val,
                                          base.expected_se, curve)}
    if scratch_epoch:
        offers["from-scratch"] = training_offer("from-scratch", scratch_epoch, budget_s, n_train, base.expected_val,
                                                base.expected_se)
    return offers


def test_the_curve_recovers_a_power_law_through_its_two_points():
    truth = _power(0.95, 3.0)
    c = _curve(truth)
    for images in (5000, 45000, 450000):
        assert c.at(images) == pytest.approx(truth(images), abs=1e-9)
    assert c.limit() == pytest.approx(0.95)
    # at the measured point the exponent does not matter: the error is that point's binomial error
    p = truth(5000)
    assert c.expected(5000)[1] == pytest.approx(math.sqrt(p * (1 - p) / N_VAL), rel=0.15)
    # further out the exponent's spread adds to it, and fewer validation rows widen it
    assert c.expected(450000)[1] > 2 * c.expected(5000)[1]
    assert _curve(truth, n_val=200).expected(450000)[1] > c.expected(450000)[1]


def test_a_curve_that_fell_is_read_as_flat():
    c = Curve([[2500, 0.80, N_VAL], [5000, 0.78, N_VAL]])
    assert c.at(10 ** 6) == pytest.approx(0.78) and c.limit() == pytest.approx(0.78)


def test_a_training_offer_runs_the_epochs_that_fit():
    assert epoch_seconds(1000, 200, {"train": 100.0, "forward": 400.0}) == pytest.approx(10.5)
    o = training_offer("fine-tune", PER_EPOCH, 200, 40000, 0.85, 0.01)
    assert o.epochs == 3 and o.seconds == pytest.approx(3 * PER_EPOCH) and o.fits and o.gain is None
    assert training_offer("fine-tune", PER_EPOCH, 10 ** 6, 40000, 0.85, 0.01).epochs == FINETUNE_EPOCHS
    short = training_offer("fine-tune", PER_EPOCH, 30, 40000, 0.85, 0.01)
    assert not short.fits and not short.pays and "more than the budget" in short.line()


def test_large_data_without_a_curve_keeps_the_decision_when_an_epoch_fits():
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.5, 0.7, 0.8, 0.85]))
    assert d.strategy == "fine-tune"
    out, larger = apply_budget(d, _offers(d), 3600)
    assert (out.strategy, out.runner_up, out.close, out.chosen_layer) == (d.strategy, d.runner_up, d.close,
                                                                          d.chosen_layer)
    assert out.reasons[:len(d.reasons)] == d.reasons and "60 min" in out.reasons[-1]
    assert _offers(d)["fine-tune"].line() == ("fine-tune last:2: expected gain over the probe not measured: no short "
                                              "fine-tune ran; 10 epochs, about 10 min here")


def test_a_budget_under_one_epoch_recommends_the_probe_and_says_what_one_epoch_costs():
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.5, 0.7, 0.8, 0.85]))
    out, larger = apply_budget(d, _offers(d, budget_s=30), 30)
    assert out.strategy == "linear-probe" and out.runner_up == "fine-tune" and out.chosen_layer == "l3"
    assert any("one epoch takes about 60 s here" in r for r in out.reasons)
    assert larger.startswith("a larger budget: 60 s buys one epoch of fine-tune last:2")


def test_the_gain_must_arrive_within_the_budget():
    d = decide(_ev(LARGE_PER_CLASS * 4, [0.5, 0.7, 0.8, 0.85]))  # 80,000 training images: one epoch
    probe = d.facts["last_val"]
    truth = _power(0.8707, 8.535)
    n = d.facts["n_train"]
    passes = next(e for e in range(1, 100) if truth(e * n) > probe)  # independent of the module's search
    assert 1 < passes < FINETUNE_EPOCHS
    curve = _curve(truth)
    short = (passes - 1) * PER_EPOCH
    out, larger = apply_budget(d, _offers(d, curve, budget_s=short), short)
    assert out.strategy == "linear-probe" and out.runner_up == "fine-tune"
    assert any(f"after {passes - 1} epochs is -" in r for r in out.reasons)
    assert f"is expected to pass the probe after {passes} epochs: a budget of about {passes} min" in larger
    enough = passes * PER_EPOCH
    out, larger = apply_budget(d, _offers(d, curve, budget_s=enough), enough)
    offer = _offers(d, curve, budget_s=enough)["fine-tune"]
    assert out.strategy == "fine-tune" and offer.epochs == passes
    assert offer.gain == pytest.approx(truth(passes * n) - probe, abs=1e-9)
    assert offer.line().startswith(f"fine-tune last:2: expected +{100 * offer.gain:.1f} +- ")
    assert offer.line().endswith(f"points over the probe after {passes} epochs (extrapolated from short "
                                 f"fine-tunes), about {passes} min here")
    assert f"about {FINETUNE_EPOCHS} min would run all {FINETUNE_EPOCHS} epochs" in larger


def test_a_curve_that_levels_off_under_the_probe_never_pays():
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.5, 0.7, 0.8, 0.85]))
    curve = Curve([[2500, 0.80, N_VAL], [5000, 0.81, N_VAL]])
    out, larger = apply_budget(d, _offers(d, curve, budget_s=10 ** 6), 10 ** 6)
    assert out.strategy == "linear-probe" and out.runner_up == "fine-tune"
    assert "no budget is expected to make it pay" in larger


def test_a_measured_gain_beyond_the_noise_upgrades_small_data_to_fine_tune():
    d = decide(_ev(100, [0.5, 0.7, 0.8, 0.85]))
    assert d.strategy == "linear-probe"
    clear = _curve(_power(0.99, 3.0, 0.5))
    out, _ = apply_budget(d, _offers(d, clear), 3600)
    offer = _offers(d, clear)["fine-tune"]
    assert offer.gain > Z * offer.gain_se and out.strategy == "fine-tune" and out.runner_up == "linear-probe"
    slight = Curve([[500, 0.84, 200], [1000, 0.85, 200]])  # a gain well inside its noise: the probe stays
    out, _ = apply_budget(d, _offers(d, slight), 3600)
    assert out.strategy == "linear-probe"


def test_from_scratch_that_does_not_fit_falls_to_the_probe():
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.9, 0.93, 0.92, 0.9], random_best=0.925))
    assert d.strategy == "from-scratch" and d.runner_up == "fine-tune"
    out, larger = apply_budget(d, _offers(d, per_epoch=120, budget_s=100, scratch_epoch=300), 100)
    assert out.strategy == d.facts["probe_regime"] and out.runner_up == "from-scratch"
    assert f"buys the {SCRATCH_MIN_EPOCHS} epochs worth running of from-scratch scratch" in larger
    out, _ = apply_budget(d, _offers(d, per_epoch=120, budget_s=200, scratch_epoch=300), 200)
    assert out.strategy == "fine-tune"  # one fine-tune epoch fits where a from-scratch one does not


def test_unmeasured_from_scratch_needs_its_fewest_epochs_worth_running():
    """From-scratch has no short curve: a budget that buys a few of its epochs recommends the probe (in the
    calibration one to five epochs never beat it); one that buys SCRATCH_MIN_EPOCHS recommends it."""
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.9, 0.93, 0.92, 0.9], random_best=0.925))
    assert d.strategy == "from-scratch"
    few = (SCRATCH_MIN_EPOCHS - 1) * 300 + 10
    offers = _offers(d, per_epoch=1e6, budget_s=few, scratch_epoch=300)
    assert offers["from-scratch"].epochs == SCRATCH_MIN_EPOCHS and not offers["from-scratch"].fits
    out, larger = apply_budget(d, offers, few)
    assert out.strategy == d.facts["probe_regime"] and out.runner_up == "from-scratch"
    assert f"the {SCRATCH_MIN_EPOCHS} epochs worth running take about 50 min here" in " ".join(out.reasons)
    enough = SCRATCH_MIN_EPOCHS * 300
    out, _ = apply_budget(d, _offers(d, per_epoch=1e6, budget_s=enough, scratch_epoch=300), enough)
    assert out.strategy == "from-scratch"
    # a from-scratch offer with a measured curve needs one epoch, like a fine-tune
    o = training_offer("from-scratch", 300, 400, 1000, 0.5, 0.01, _curve(_power(0.9, 5.0)))
    assert o.min_epochs == 1 and o.fits and o.epochs == 1


def test_in_place_of_a_dropped_from_scratch_a_fine_tune_needs_a_gain_beyond_its_noise():
    """From-scratch dropped (its ten epochs do not fit): the runner-up fine-tune takes its place only when
    its short curve's expected gain exceeds Z standard errors; a gain inside its noise gives the probe."""
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.9, 0.93, 0.92, 0.9], random_best=0.925))
    assert (d.strategy, d.runner_up) == ("from-scratch", "fine-tune")
    probe_val = d.facts["peak_val"]
    for curve, expected in ((Curve([[2500, 0.80, 500], [5000, 0.86, 500]]), None),
                            (_curve(_power(0.999, 3.0)), "fine-tune")):
        offers = _offers(d, curve, budget_s=3600, scratch_epoch=3600)
        ft = offers["fine-tune"]
        assert ft.pays and ft.gain is not None
        out, _ = apply_budget(d, offers, 3600)
        if expected is None:  # a noisy positive gain: inside its noise
            assert 0 < ft.gain <= Z * ft.gain_se, (ft.gain, ft.gain_se, probe_val)
            assert out.strategy == d.facts["probe_regime"] and out.runner_up == "from-scratch"
            assert any("standard errors of none: the probe" in r for r in out.reasons)
        else:
            assert ft.gain > Z * ft.gain_se and out.strategy == "fine-tune" and out.runner_up == "from-scratch"


def test_no_regime_named_is_left_alone():
    d = decide(Evidence(n_train=100, n_classes=2, per_class_min=50, per_class_median=50, weights="random",
                        curve=[LayerPoint("a", 0.0, 0.6, 100), LayerPoint("b", 1.0, 0.7, 100)]))
    assert apply_budget(d, {"fine-tune": None}, 10) == (d, "")
