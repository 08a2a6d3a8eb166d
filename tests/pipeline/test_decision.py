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


def _gap(peak, last, diff, se, method="kfold 2x5"):
    return {"difference": diff, "se": se, "method": method, "n": 500, "in_se": diff / se, "peak": peak, "last": last}


def test_a_paired_gap_decides_where_the_unpaired_errors_would_not():
    # 3 points on 300 rows: 1.3 unpaired standard errors; paired, the two layers disagree on few rows
    vals = [0.80, 0.88, 0.93, 0.90]
    unpaired = decide(_ev(20, vals, n_val=300))
    paired = decide(_ev(20, vals, n_val=300, peak_gap=_gap("l2", "l3", 0.03, 0.006)))
    assert unpaired.strategy == "linear-probe" and unpaired.facts["gap_method"] == "unpaired"
    assert paired.strategy == "generic-features" and paired.chosen_layer == "l2" and not paired.close
    assert paired.facts["gap_method"].startswith("paired") and paired.facts["gap_in_se"] == pytest.approx(5.0)


def test_a_paired_gap_of_another_pair_of_layers_is_not_used():
    d = decide(_ev(20, [0.80, 0.88, 0.93, 0.90], n_val=300, peak_gap=_gap("l1", "l3", 0.03, 0.006)))
    assert d.facts["gap_method"] == "unpaired"


@pytest.mark.parametrize("in_se", [1.2, 1.6, 1.95])
def test_a_close_call_keeps_the_last_layer_and_names_both(in_se):
    d = decide(_ev(20, [0.80, 0.88, 0.93, 0.90], n_val=300, peak_gap=_gap("l2", "l3", 0.03, 0.03 / in_se)))
    assert d.strategy == "linear-probe" and d.runner_up == "generic-features" and d.close
    assert d.chosen_layer == "l3"
    assert any("close call" in r and "last layer" in r for r in d.reasons)


def test_a_paired_gap_just_past_z_is_generic_features_and_not_close():
    d = decide(_ev(20, [0.80, 0.88, 0.93, 0.90], n_val=300, peak_gap=_gap("l2", "l3", 0.03, 0.03 / 2.1)))
    assert d.strategy == "generic-features" and not d.close and d.chosen_layer == "l2"


def test_a_gap_under_one_standard_error_is_neither_generic_nor_close():
    d = decide(_ev(20, [0.80, 0.88, 0.93, 0.90], n_val=300, peak_gap=_gap("l2", "l3", 0.03, 0.05)))
    assert d.strategy == "linear-probe" and not d.close and d.chosen_layer == "l3"


def test_a_measured_fine_tune_that_lost_on_large_data_gives_the_probe_at_that_budget():
    ev = _ev(LARGE_PER_CLASS * 3, [0.7, 0.85, 0.89, 0.884], n_val=6000, random_best=0.7,
             finetune_val=0.863, finetune_n_val=6000, finetune_budget="last:2, 1 epoch, 64 px")
    d = decide(ev)
    assert d.strategy in ("linear-probe", "generic-features") and d.runner_up == "fine-tune"
    assert any("last:2, 1 epoch, 64 px" in r for r in d.reasons)
    won = decide(_ev(LARGE_PER_CLASS * 3, [0.7, 0.85, 0.89, 0.884], n_val=6000, random_best=0.7,
                     finetune_val=0.93, finetune_n_val=6000))
    assert won.strategy == "fine-tune"


def test_a_rise_within_its_paired_noise_has_levelled_off():
    lc = {0.5: 0.80, 1.0: 0.82}
    noisy = decide(_ev(600, [0.7, 0.8, 0.82], n_val=300, learning_curve=lc,
                       learning_gap={"difference": 0.02, "se": 0.015, "method": "split", "n": 300}))
    clear = decide(_ev(600, [0.7, 0.8, 0.82], n_val=300, learning_curve=lc,
                       learning_gap={"difference": 0.02, "se": 0.005, "method": "split", "n": 300}))
    assert any("levelled off" in r for r in noisy.reasons) and noisy.runner_up != "fine-tune"
    assert any("still rises" in r for r in clear.reasons) and clear.runner_up == "fine-tune"


def test_a_close_call_keeps_the_other_layer_as_runner_up_when_the_probe_still_rises():
    """CIFAR-10 at 128 px, seeds 1 and 2: a close call between the peak and the last layer while the probe's
    learning curve still rose; 'fine-tuning is the runner-up' overwrote the close call's runner-up, so the
    output called it a close call without naming the other layer."""
    rising = {"learning_curve": {0.5: 0.76, 1.0: 0.78},
              "learning_gap": {"difference": 0.02, "se": 0.005, "method": "split", "n": 1000}}
    close = decide(_ev(500, [0.5, 0.7, 0.784, 0.775], peak_gap=_gap("l2", "l3", 0.009, 0.009), **rising))
    assert (close.strategy, close.runner_up, close.close) == ("linear-probe", "generic-features", True)
    assert any("fine-tuning comes after" in r for r in close.reasons)
    clear = decide(_ev(500, [0.5, 0.7, 0.784, 0.70], peak_gap=_gap("l2", "l3", 0.084, 0.009), **rising))
    assert (clear.strategy, clear.runner_up, clear.close) == ("generic-features", "fine-tune", False)


def test_random_weights_alone_name_no_transfer_regime():
    d = decide(_ev(100, [0.8, 0.95, 0.9, 0.85], weights="random"))
    assert d.strategy is None and any("no transfer regime" in r for r in d.reasons)
