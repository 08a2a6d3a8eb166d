"""The depth curve the decision reads: every layer measured the same way, paired peak-vs-last, no test rows."""
import numpy as np
import pytest

from tests.conftest import make_npz
from transferlab.pipeline import evidence
from transferlab.pipeline.decision import Evidence, decide

LAYERS = ["blocks.2", "blocks.4", "bn2"]


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    import transferlab

    tmp = tmp_path_factory.mktemp("evidence")
    npz = make_npz(tmp / "d.npz", n_train=90, n_test=30, size=16, val=30)
    return transferlab.extract(f"npz:{npz}", "lite0", layers=",".join(LAYERS), image_size=32,
                               cache_dir=tmp / "cache", progress=False, log=lambda m: None)


def test_small_validation_measures_every_layer_by_the_same_repeated_folds(cache_file, monkeypatch):
    seen = []
    real = evidence.fold_table
    monkeypatch.setattr(evidence, "fold_table",
                        lambda X, y, splits, *a, **k: (seen.extend((X.shape[1], te.tolist()) for _, te in splits),
                                                       real(X, y, splits, *a, **k))[1])
    m = evidence.measure_curve(cache_file, LAYERS, seed=0)  # n_jobs=1: in this process, so the patch sees it
    assert m.method == "kfold 2x5" and [p.layer for p in m.points] == LAYERS
    assert all(p.n_val == 120 and p.method == "kfold 2x5" for p in m.points)  # 90 train + 30 val rows
    by_layer = {}
    for dim, rows in seen:
        by_layer.setdefault(dim, []).append(rows)
    assert len(seen) == 30 and len(by_layer) == 3  # 3 layers x 10 folds
    folds = list(by_layer.values())
    assert folds[0] == folds[1] == folds[2]  # the pairing: one set of folds for all layers
    peak = max(m.points, key=lambda p: (p.val_accuracy, p.rel_depth))
    assert m.peak == peak.layer and m.last == "bn2"
    if m.gap is not None:
        assert m.gap.difference == pytest.approx(peak.val_accuracy - m.points[-1].val_accuracy)


def test_a_large_enough_split_is_paired_on_its_rows_and_matches_a_direct_fit(cache_file):
    from transferlab.classifiers.heads import make_head
    from transferlab.features.cache import load_split

    m = evidence.measure_curve(cache_file, LAYERS, seed=0, small_val=10)
    assert m.method == "split" and all(p.n_val == 30 for p in m.points)
    for p in m.points:  # independent: the head refitted at the chosen C on train, scored on val
        X, y, _ = load_split(cache_file, "train", p.layer)
        Xv, yv, _ = load_split(cache_file, "val", p.layer)
        est = make_head("logreg", seed=0).set_params(head__C=m.params[p.layer]["C"]).fit(X, y)
        assert p.val_accuracy == pytest.approx(np.mean(est.predict(Xv) == yv), abs=1.5 / 30)


def test_known_accuracies_are_not_refitted_except_the_pair_compared(cache_file, monkeypatch):
    calls = []
    real = evidence.split_correctness
    monkeypatch.setattr(evidence, "split_correctness", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    known = {"blocks.2": 0.5, "blocks.4": 0.9, "bn2": 0.6}
    m = evidence.measure_curve(cache_file, LAYERS, seed=0, small_val=10, known=known)
    assert [p.val_accuracy for p in m.points] == [0.5, 0.9, 0.6]
    assert m.peak == "blocks.4" and len(calls) == 2
    calls.clear()
    evidence.measure_curve(cache_file, LAYERS, seed=0, small_val=10)
    assert len(calls) == len(LAYERS)  # the compared pair reuses the fits that measured the curve


def test_a_peak_at_the_last_layer_keeps_its_rows_for_pairing(cache_file):
    """Known accuracies that put the peak at the last layer: its per-row pairs are still measured, so two
    such measurements pair (they raised KeyError)."""
    known = {"blocks.2": 0.5, "blocks.4": 0.6, "bn2": 0.9}
    m = evidence.measure_curve(cache_file, LAYERS, seed=0, small_val=10, known=known)
    assert m.peak == m.last == "bn2" and m.gap is None
    gap = evidence.peak_gap_between(m, m)
    assert gap.difference == 0 and len(m.paired["bn2"]) == 30


def test_the_test_split_is_never_read(cache_file, monkeypatch):
    from transferlab.features import cache

    seen = []
    real = cache.load_split
    monkeypatch.setattr(evidence, "load_split", lambda p, s, l: (seen.append(s), real(p, s, l))[1])
    evidence.measure_curve(cache_file, LAYERS, seed=0)
    evidence.measure_curve(cache_file, LAYERS, seed=0, small_val=10)
    assert seen and set(seen) <= {"train", "val"}


def test_the_folds_run_in_parallel_workers_with_the_same_result(cache_file):
    one = evidence.measure_curve(cache_file, LAYERS, seed=0)
    two = evidence.measure_curve(cache_file, LAYERS, seed=0, n_jobs=2)
    assert [p.val_accuracy for p in one.points] == [p.val_accuracy for p in two.points]
    assert one.gap_record() == two.gap_record()


def test_seeds_give_one_regime_or_a_named_close_call(cache_file):
    answers = []
    for seed in (0, 1, 2):
        m = evidence.measure_curve(cache_file, LAYERS, seed=seed)
        ev = Evidence(n_train=90, n_classes=3, per_class_min=30, per_class_median=30, curve=m.points,
                      peak_gap=m.gap_record())
        d = decide(ev)
        answers.append((d.strategy, d.close))
    strategies = {s for s, _ in answers}
    # differing answers are allowed only where the output calls it a close call (which keeps the last layer)
    assert len(strategies) == 1 or any(s == "linear-probe" and close for s, close in answers), answers


def test_in_process_the_layers_run_a_thread_per_core_each_on_one_torch_thread(cache_file, monkeypatch):
    import threading

    import torch

    seen = []
    real = evidence._fold_task

    def task(*args):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return real(*args)

    monkeypatch.setattr(evidence, "_fold_task", task)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = evidence.measure_curve(cache_file, LAYERS, seed=0)  # one core: in this thread, in turn
        assert {ident for ident, _ in seen} == {threading.get_ident()} and len(seen) == len(LAYERS)
        seen.clear()
        torch.set_num_threads(2)
        two = evidence.measure_curve(cache_file, LAYERS, seed=0)
        assert torch.get_num_threads() == 2  # set back
    finally:
        torch.set_num_threads(before)
    assert threading.get_ident() not in {ident for ident, _ in seen} and {n for _, n in seen} == {1}
    assert [p.val_accuracy for p in one.points] == [p.val_accuracy for p in two.points]
    assert one.params == two.params and one.gap_record() == two.gap_record()
