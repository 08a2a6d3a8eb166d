"""The multi-layer head in the sweep: one more row per curve, its layer the chosen layers; it never becomes the
layer choice."""
import json

import pytest

from tests.conftest import make_npz, run_cli
from transferlab.classifiers import train_multilayer
from transferlab.pipeline.sweep import SweepConfig, sweep


@pytest.fixture
def tiny(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=30, size=16)
    return dict(data=f"npz:{npz}", backbone="lite0", heads="logreg,multi", layers="bn1,blocks.2,bn2",
                image_size="32", out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), n_jobs=1)


def test_sweep_with_heads_multi_adds_one_row_per_curve_equal_to_train_multilayer(tiny, tmp_path):
    summary = sweep(SweepConfig(**tiny), progress=False)
    rows = summary["rows"]
    assert [r["head"] for r in rows].count("logreg") == 3
    (multi,) = [r for r in rows if r["head"] == "multi"]
    layers = multi["layer"].split("+")
    assert layers and set(layers) <= {"bn1", "blocks.2", "bn2"}
    assert multi["params"]["layers"] == layers  # res["rows"] is typed: params a dict
    assert multi["params"]["candidates"] == ["bn1", "blocks.2", "bn2"]  # what its key is made of
    direct = train_multilayer(multi["cache_file"], ["bn1", "blocks.2", "bn2"], seed=0)
    assert direct["layer"] == multi["layer"]
    assert float(multi["test_accuracy"]) == pytest.approx(direct["test_accuracy"], abs=1e-6)
    assert summary["decision"]["curve"]["head"] == "logreg"  # the layer choice is made on per-layer curves
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"| multi | all | {multi['layer']} |" in report
    again = sweep(SweepConfig(**tiny), progress=False)
    assert again["timing"]["fits_run"] == 0 and again["rows"] == rows
    assert again["stale_rows_moved"] == 0  # the multi row's key is valid again: it stays current


def test_sweep_heads_multi_from_the_command_line(tiny, tmp_path):
    out = run_cli("sweep", "--data", tiny["data"], "--heads", "multi", "--layers", "bn1,bn2", "--image-size", "32",
                  "--out", tmp_path / "cli", "--cache-dir", tiny["cache_dir"], "--quiet")
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "cli" / "results.json").read_text())["rows"]
    assert [r["head"] for r in rows] == ["multi"] and (tmp_path / "cli" / "depth_vs_accuracy.png").is_file()
