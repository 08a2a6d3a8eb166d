"""One measurement shared: `advise`, `sweep` and `finetune --append-to` read the same cache files and
the same validation rows of one data set."""
import json

import numpy as np
import pytest

from tests.conftest import make_npz, run_cli
from transferlab.classifiers.holdout import stratified_holdout, stratified_sample
from transferlab.features import load_dataset
from transferlab.features.cache import list_layers, load_split, read_cache_meta

SIZE = "32"


@pytest.fixture
def passes(monkeypatch):
    """Every forward pass over a data set (the engine's run), as (data name, weights, split sizes, layers)."""
    from transferlab.features import extraction

    seen, real = [], extraction.extract_locked

    def counted(job):
        seen.append((job.dataset.spec, job.spec.weights, {s: len(v) for s, v in job.dataset.splits.items()},
                     [i.name for i in job.wanted]))
        return real(job)

    monkeypatch.setattr(extraction, "extract_locked", counted)
    return seen


def _by_weights(files) -> dict:
    return {read_cache_meta(f)["weights"]: f for f in files}


def _curve(points) -> list:
    return [(p["layer"], p["n_val"], p["method"], round(p["val_accuracy"], 12)) for p in points]


def _sweep(npz, cache, out, *extra):
    res = run_cli("sweep", "--data", f"npz:{npz}", "--image-size", SIZE, "--cache-dir", cache, "--heads", "logreg",
                  "--out", out, "--quiet", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "results.json").read_text())


def _advise(npz, cache, *extra):
    res = run_cli("advise", "--data", f"npz:{npz}", "--image-size", SIZE, "--cache-dir", cache, "--json", "--quiet",
                  *extra)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_a_sweep_after_advise_extracts_nothing_and_decides_on_advises_rows(tmp_path, passes):
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=24, size=16)  # within advise's default caps
    cache = tmp_path / "cache"
    adv = _advise(npz, cache)
    # advise extracted the whole data set, the test split too (extraction decides nothing), once per weights
    assert [(w, splits) for _, w, splits, _ in passes] == [("imagenet", {"train": 60, "test": 24}),
                                                           ("random", {"train": 60, "test": 24})]
    files = _by_weights(cache.glob("*.h5"))
    assert set(files) == {"imagenet", "random"} and len(list(cache.glob("*.h5"))) == 2
    catalog = read_cache_meta(files["imagenet"])["catalog"]
    assert "classifier" in list_layers(files["imagenet"]) and "classifier" not in catalog  # the logits rode along

    passes.clear()
    res = _sweep(npz, cache, tmp_path / "run", "--weights", "imagenet,random")
    assert passes == []  # no forward pass: both files were found
    assert sorted(res["cache_files"]) == sorted(str(f) for f in files.values())
    assert len(list(cache.glob("*.h5"))) == 2
    # the sweep reads the catalog's layers, not the classifier stored beside them
    for w in ("imagenet", "random"):
        assert [r["layer"] for r in res["rows"] if r["weights"] == w] == catalog

    # the decision's curve is advise's: the same rows (48 + 12 held out of train, 5-fold twice), the same numbers
    assert res["measurement"]["cache_file"] == str(files["imagenet"])
    assert _curve(res["measurement"]["points"]) == _curve(adv["evidence"]["curve"])
    assert {p["n_val"] for p in adv["evidence"]["curve"]} == {60}
    assert res["measurement"]["gap"] == adv["evidence"]["peak_gap"]


def test_advise_on_capped_data_after_a_sweep_reads_the_sweeps_file(tmp_path, passes):
    npz = make_npz(tmp_path / "d.npz", n_train=90, n_test=24, size=16)
    cache = tmp_path / "cache"
    res = _sweep(npz, cache, tmp_path / "run", "--weights", "imagenet,random")
    files = _by_weights(cache.glob("*.h5"))
    passes.clear()
    logs = []
    from transferlab.pipeline.advise import advise

    adv = advise(f"npz:{npz}", image_size=32, max_train=40, max_val=10, cache_dir=cache, log=logs.append)
    # the curves (pretrained and random) come from the sweep's files; the only pass computes the source
    # classifier's logits (a layer the sweep did not store) on the 10 measured validation rows alone
    assert [(w, splits, layers) for _, w, splits, layers in passes] == [("imagenet", {"val": 10}, ["classifier"])]
    new = [f for f in cache.glob("*.h5") if f not in files.values()]
    assert len(new) == 1 and read_cache_meta(new[0])["splits"] == ["val"]
    assert not any("its own cache file" in m for m in logs)
    assert [m for m in logs if m.startswith("advise reads")] == [
        f"advise reads its capped sample ({w} weights) from the full data's cache file {files[w]}"
        for w in ("imagenet", "random")]
    assert adv.evidence["source_confidence"] is not None and adv.evidence["random_best"] is not None
    assert {p["n_val"] for p in adv.evidence["curve"]} == {50}

    # the same capped rows as advise extracting its own subset (a cache without the sweep's file)
    logs.clear()
    own = advise(f"npz:{npz}", image_size=32, max_train=40, max_val=10, cache_dir=tmp_path / "own", log=logs.append)
    assert [m for m in logs if "own cache file" in m] == [
        f"advise measures a capped subset of 50 rows ({w} weights): its own cache file; a sweep extracts the full data"
        for w in ("imagenet", "random")]
    subset = _by_weights((tmp_path / "own").glob("*.h5"))["imagenet"]
    _, y_full, ids_full = load_split(files["imagenet"], "train", "bn2")
    tr, va, _ = stratified_holdout(y_full, 0.2, 0)  # the heads' rows, then advise's stratified sample
    want_train = ids_full[tr][stratified_sample(y_full[tr], 40, 0)]
    want_val = ids_full[va][stratified_sample(y_full[va], 10, 0)]
    np.testing.assert_array_equal(load_split(subset, "train", "bn2")[2], want_train)
    np.testing.assert_array_equal(load_split(subset, "val", "bn2")[2], want_val)
    assert _curve(adv.evidence["curve"]) == _curve(own.evidence["curve"])
    assert adv.evidence["source_confidence"] == pytest.approx(own.evidence["source_confidence"], abs=1e-3)
    assert res["measurement"] is not None


@pytest.mark.parametrize("val", [0, 15], ids=["held out of train", "val split"])
def test_finetune_append_to_validates_on_the_sweeps_rows(tmp_path, monkeypatch, val):
    from transferlab.finetuning import run as run_mod

    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=12, size=16, val=val)
    res = _sweep(npz, tmp_path / "cache", tmp_path / "run", "--seed", "1", "--layers", "bn2")
    # the sweep's validation rows: the data's val split, else the heads' holdout of the cache's train split
    cache_file = res["cache_files"][0]
    if val:
        split, ids = "val", load_split(cache_file, "val", "bn2")[2]
    else:
        _, y, ids = load_split(cache_file, "train", "bn2")
        split, ids = "train", ids[stratified_holdout(y, 0.2, 1)[1]]
    assert {int(r["n_val"]) for r in res["rows"]} == {ids.size}

    seen, real = [], run_mod.finetune_splits
    monkeypatch.setattr(run_mod, "finetune_splits", lambda *a: seen.append(real(*a)) or seen[-1])
    out = run_cli("finetune", "--data", f"npz:{npz}", "--mode", "head", "--epochs", "1", "--no-augment",
                  "--out", tmp_path / "ft", "--append-to", tmp_path / "run", "--quiet")
    assert out.returncode == 0, out.stderr
    val_rows = seen[0][1].images.permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(val_rows, load_dataset(f"npz:{npz}").splits[split].images[ids])
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["n_val"] == ids.size and metrics["config"]["seed"] == 1
