"""`transferlab advise`: evidence measured on train/val only, a regime named, --json, bad input."""
import json

import numpy as np
import pytest

from tests.conftest import make_npz, run_cli
from transferlab.pipeline.decision import REGIMES
from transferlab.pipeline.price import DEFAULT_BUDGET_MINUTES


@pytest.fixture(scope="module")
def advice(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("advise")
    npz = make_npz(tmp / "d.npz", n_train=90, n_test=30, size=16)
    out = run_cli("advise", "--data", f"npz:{npz}", "--image-size", "32", "--max-train", "60", "--max-val", "30",
                  "--cache-dir", tmp / "cache", "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), npz, tmp


def test_json_names_a_regime_with_its_evidence(advice):
    adv, _, _ = advice
    assert adv["strategy"] in REGIMES and adv["runner_up"] in REGIMES and adv["runner_up"] != adv["strategy"]
    assert set(adv) >= {"strategy", "runner_up", "close", "reasons", "evidence", "thresholds", "next_command"}
    curve = adv["evidence"]["curve"]
    assert [p["layer"] for p in curve] == ["bn1"] + [f"blocks.{i}" for i in range(7)] + ["bn2"]
    # 18 validation rows are too few to decide on: every layer is measured by repeated k-fold on the
    # 60 + 18 labelled rows, the same folds for all
    assert all(0 <= p["val_accuracy"] <= 1 and p["n_val"] == 78 and p["logme"] is not None for p in curve)
    assert {p["method"] for p in curve} == {"kfold 2x5"}
    gap = adv["evidence"]["peak_gap"]
    assert gap is None or (gap["method"] == "kfold 2x5" and gap["last"] == "bn2")
    assert adv["evidence"]["random_best"] is not None and 0 < adv["evidence"]["source_confidence"] <= 1
    assert adv["evidence"]["random_method"] == "kfold 1x5"  # random weights: one repeat of the same folds
    assert adv["evidence"]["per_class_median"] == 30 and adv["next_command"].startswith("transferlab ")


def test_small_data_states_the_assumed_budget_and_runs_no_short_fine_tunes(advice):
    adv, _, _ = advice
    assert adv["budget_assumed"] is True and adv["budget_minutes"] == DEFAULT_BUDGET_MINUTES
    p = adv["price"]
    assert p["finetune_curve"] is None and p["finetune_probe_seconds"] == 0
    assert adv["strategy"] in p["offers"] and adv["runner_up"] in p["offers"]
    assert p["offers"]["fine-tune"]["how"].startswith("not measured: no short fine-tune ran")


@pytest.mark.parametrize("caps", [(60, 30), (5000, 2000)], ids=["capped subset", "whole data, test split cached"])
def test_advise_never_reads_the_test_split(advice, monkeypatch, caps):
    from transferlab.features import cache

    _, npz, tmp = advice
    seen = []
    real = cache.load_split
    monkeypatch.setattr(cache, "load_split", lambda p, split, layer: (seen.append(split), real(p, split, layer))[1])
    from transferlab.pipeline import advise as advise_mod
    from transferlab.pipeline import evidence as evidence_mod

    monkeypatch.setattr(advise_mod, "load_split", cache.load_split)
    monkeypatch.setattr(evidence_mod, "load_split", cache.load_split)
    advise_mod.advise(f"npz:{npz}", image_size=32, max_train=caps[0], max_val=caps[1], cache_dir=tmp / "cache",
                      compare_random=False, scores=False, log=lambda m: None)
    assert seen and set(seen) <= {"train", "val"}
    if caps[0] > 90:  # within the caps advise extracts every split for the sweep to share, and reads none of test
        full = [f for f in (tmp / "cache").glob("*.h5") if "test" in cache.read_cache_meta(f)["splits"]]
        assert len(full) == 1


def test_the_evidence_equals_a_direct_computation_from_the_cache_files(advice):
    """Each layer's probe accuracy (repeated k-fold), kNN accuracy and LogME, and the random weights' best layer, as
    advise reports them, against the same quantities computed here from the cache files it wrote: however advise
    shares the work (one read of a layer for several folds), its figures stay these."""
    from transferlab.classifiers.compare import kfold_accuracies, repeated_folds
    from transferlab.classifiers.transferability import knn_accuracy, logme
    from transferlab.features.cache import load_split, read_cache_meta

    adv, _, tmp = advice
    files = {read_cache_meta(p)["weights"]: p for p in sorted((tmp / "cache").glob("*.h5"))
             if sorted(read_cache_meta(p)["splits"]) == ["train", "val"]}  # the capped subset's, one per weights

    def direct(path, layer, repeats=2):
        X, y, _ = load_split(path, "train", layer)
        Xv, yv, _ = load_split(path, "val", layer)
        ya = np.concatenate([y, yv])
        per_fold, _ = kfold_accuracies(np.concatenate([X, Xv]), ya, repeated_folds(ya, 5, repeats, seed=0), "logreg",
                                       seed=0)
        return float(per_fold.mean()), (X, y, Xv, yv)

    for point in adv["evidence"]["curve"]:
        acc, (X, y, Xv, yv) = direct(files["imagenet"], point["layer"])
        assert point["val_accuracy"] == acc
        assert point["knn"] == knn_accuracy(X, y, Xv, yv, k=10)
        assert point["logme"] == pytest.approx(logme(X, y), rel=1e-9)
    layers = [p["layer"] for p in adv["evidence"]["curve"]]
    # random weights: the first repeat's folds only (only their best enters the decision, unpaired)
    assert adv["evidence"]["random_best"] == max(direct(files["random"], layer, repeats=1)[0] for layer in layers)


def test_the_text_output_states_thresholds_and_the_next_command(advice):
    _, npz, tmp = advice
    out = run_cli("advise", "--data", f"npz:{npz}", "--image-size", "32", "--max-train", "60", "--max-val", "30",
                  "--cache-dir", tmp / "cache", "--quiet", "--no-random")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("strategy: ") and "runner-up: " in out.stdout
    assert f"\nbudget: {DEFAULT_BUDGET_MINUTES:g} min (assumed: pass --budget MINUTES to change it)\n" in out.stdout
    # each row of the evidence table says how its accuracy was measured
    table = [l for l in out.stdout.splitlines() if l.startswith("  bn1 ") or l.startswith("  blocks.")
             or l.startswith("  bn2 ")]
    assert len(table) == 9 and all(l.endswith("kfold 2x5 of train+val, 78 rows") for l in table)
    assert "knn: one validation split" in out.stdout
    assert "thresholds: large_per_class=" in out.stdout and "next: transferlab " in out.stdout


def test_too_few_images_per_class_is_said_and_defaults_to_a_linear_probe(tmp_path):
    npz = make_npz(tmp_path / "few.npz", n_train=9, n_test=6, size=16)
    out = run_cli("advise", "--data", f"npz:{npz}", "--image-size", "32", "--json", "--quiet",
                  "--cache-dir", tmp_path / "cache")
    assert out.returncode == 0, out.stderr
    adv = json.loads(out.stdout)
    assert adv["strategy"] == "linear-probe" and "too few" in adv["reasons"][0]


@pytest.mark.parametrize("case", ["single class", "unreadable"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    if case == "single class":
        x = np.zeros((20, 8, 8), np.uint8)
        np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(20, int), x_test=x[:4], y_test=np.zeros(4, int))
    else:
        (tmp_path / "d.npz").write_bytes(b"not an archive")
    out = run_cli("advise", "--data", f"npz:{tmp_path / 'd.npz'}", "--quiet", "--cache-dir", tmp_path / "c")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert ("single class" in lines[0]) if case == "single class" else ("d.npz" in lines[0])


def test_the_measurements_run_numpys_blas_on_one_thread_and_set_it_back(advice, monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    from transferlab.pipeline import advise as advise_mod

    _, npz, tmp = advice
    blas = lambda: {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}  # noqa: E731
    seen = []
    real = advise_mod._learning_curve
    monkeypatch.setattr(advise_mod, "_learning_curve", lambda *a: (seen.append(blas()), real(*a))[1])
    with threadpool_limits(2, user_api="blas"):
        advise_mod.advise(f"npz:{npz}", image_size=32, max_train=60, max_val=30, cache_dir=tmp / "cache",
                          compare_random=False, scores=False, log=lambda m: None)
        assert seen == [{1}] and blas() == {2}
