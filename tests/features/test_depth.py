"""One definition of depth: the default catalog's forward order, stored in the cache, read by all."""
import json

import h5py
import pytest

from tests.conftest import make_npz, run_cli
from transferlab.classifiers import train_head
from transferlab.features import catalog
from transferlab.pipeline.sweep import SweepConfig, sweep

# lite0's catalog: bn1 0, blocks.0..6 -> 1..7, bn2 8
EXPECTED = {"bn1": 0, "blocks.2.0": 3, "blocks.2": 3, "blocks.5": 6, "bn2": 8}


def test_catalog_depth_does_not_depend_on_what_else_is_asked(lite0):
    for asked in (["blocks.5", "bn2"], ["bn1", "blocks.2", "blocks.5", "bn2"], ["blocks.2.0", "blocks.2"]):
        got = {i.name: (i.depth, i.rel_depth) for i in catalog(lite0.model, asked, image_size=32)}
        assert got == {n: (EXPECTED[n], round(EXPECTED[n] / 8, 4)) for n in asked}


@pytest.mark.parametrize("layers", ["bn1,blocks.2,blocks.5,bn2", "blocks.5,bn2"])
def test_depth_is_equal_in_sweep_train_layers_and_the_cache(tmp_path, layers):
    npz = make_npz(tmp_path / "d.npz", n_train=30, n_test=12)
    summary = sweep(SweepConfig(data=f"npz:{npz}", heads="knn", layers=layers, image_size="32",
                                out=str(tmp_path / "run"), cache_dir=str(tmp_path / "c"), n_jobs=1), progress=False)
    (path,) = summary["cache_files"]
    names = layers.split(",")
    with h5py.File(path, "r") as f:
        cached = {n: (int(f[f"train/features/{n}"].attrs["depth"]), float(f[f"train/features/{n}"].attrs["rel_depth"]))
                  for n in names}
        assert json.loads(f.attrs["catalog"]) == ["bn1"] + [f"blocks.{i}" for i in range(7)] + ["bn2"]
    swept = {r["layer"]: (int(r["depth"]), float(r["rel_depth"])) for r in summary["rows"]}
    trained = {n: (train_head(path, n, "knn")["depth"], train_head(path, n, "knn")["rel_depth"]) for n in names}
    listed = json.loads(run_cli("layers", "--backbone", "lite0", "--layers", layers, "--image-size", "32",
                                "--json").stdout)
    listed = {r["layer"]: (r["depth"], r["rel_depth"]) for r in listed}
    expected = {n: (EXPECTED[n], round(EXPECTED[n] / 8, 4)) for n in names}
    assert cached == swept == trained == listed == expected
    if "bn1" not in layers:  # the report once put blocks.5 at "relative depth 0.00" when asked for blocks.5,bn2
        assert "relative depth 0.00" not in (tmp_path / "run" / "report.md").read_text()
