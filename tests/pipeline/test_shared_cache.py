"""One measurement shared: `sweep` and `finetune --append-to` validate on the same rows of one data set."""
import json

import numpy as np
import pytest

from tests.conftest import make_npz, run_cli
from transferlab.classifiers.holdout import stratified_holdout
from transferlab.features import load_dataset
from transferlab.features.cache import load_split

SIZE = "32"


def _sweep(npz, cache, out, *extra):
    res = run_cli("sweep", "--data", f"npz:{npz}", "--image-size", SIZE, "--cache-dir", cache, "--heads", "logreg",
                  "--out", out, "--quiet", *extra)
    assert res.returncode == 0, res.stderr
    return json.loads((out / "results.json").read_text())


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
