"""The decision function on synthetic evidence: each quadrant, near-ties, noise and missing evidence."""
import pytest

from transferlab.pipeline.decision import LARGE_PER_CLASS, Evidence, LayerPoint, decide, stderr


def _curve(vals, n_val=1000):
    n = len(vals)
    return [LayerPoint(f"l{i}", i / (n - 1), v, n_val) for i, v in enumerate(vals)]


def _ev(per_class, vals, n_val=1000, random_best=None, **kw):
    return Evidence(n_train=per_class * 10, n_classes=10, per_class_min=per_class, per_class_median=per_class,
                    curve=_curve(vals, n_val), random_best=random_best, random_n_val=n_val, **kw)


def test_small_and_similar_is_a_linear_probe():
    d = decide(_ev(100, [0.5, 0.7, 0.85, 0.9], random_best=0.4))
    assert d.strategy == "linear-probe" and d.chosen_layer == "l3" and not d.close


def test_small_and_dissimilar_is_generic_features_on_the_peak_layer():
    d = decide(_ev(100, [0.8, 0.95, 0.9, 0.85], random_best=0.8))
    assert d.strategy == "generic-features" and d.chosen_layer == "l1" and d.runner_up == "linear-probe"


def test_large_and_helped_by_the_source_is_fine_tune():
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.5, 0.7, 0.8, 0.85], random_best=0.45))
    assert d.strategy == "fine-tune"


def test_large_and_not_helped_by_the_source_is_from_scratch():
    d = decide(_ev(LARGE_PER_CLASS * 2, [0.9, 0.93, 0.92, 0.9], random_best=0.925))
    assert d.strategy == "from-scratch" and d.runner_up == "fine-tune"


def test_a_gap_within_the_noise_is_not_read_as_generic_features():
    # 4 of 240 validation images: 1.7 points, under 2 standard errors of the difference
    d = decide(_ev(20, [0.80, 0.88, 0.917, 0.90], n_val=240))
    assert d.strategy == "linear-probe" and d.facts["gap_in_se"] < 2
    assert any("within 2 standard errors" in r for r in d.reasons)


def test_the_same_gap_on_more_validation_rows_is_real():
    d = decide(_ev(20, [0.80, 0.88, 0.917, 0.90], n_val=20000))
    assert d.strategy == "generic-features"


def test_near_ties_are_flagged_close():
    se = stderr(0.9, 1000) * 2 ** 0.5
    d = decide(_ev(100, [0.7, 0.9 + 1.5 * se, 0.9], n_val=1000))
    assert d.strategy == "linear-probe" and d.close


def test_missing_evidence_still_decides_and_says_what_was_not_measured():
    d = decide(_ev(LARGE_PER_CLASS, [0.5, 0.6]))
    assert d.strategy == "fine-tune" and any("not measured" in r for r in d.reasons)


def test_random_weights_are_never_credited_with_source_features():
    d = decide(_ev(100, [0.8, 0.95, 0.9, 0.85], weights="random"))
    assert any("not ImageNet" in r for r in d.reasons)
    # a sweep of random weights only: its own best must not be read as "pretrained against random"
    for per_class in (100, LARGE_PER_CLASS):
        d = decide(_ev(per_class, [0.8, 0.95, 0.9, 0.85], random_best=0.95, weights="random"))
        assert not any("pretrained beats random" in r for r in d.reasons), d.reasons
        assert "source_gain" not in d.facts and d.strategy != "from-scratch"


def test_stderr_is_binomial_and_never_zero():
    assert stderr(0.5, 100) == pytest.approx(0.05)
    assert stderr(1.0, 100) > 0
