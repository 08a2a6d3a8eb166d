"""The sweep's layer similarity: the CKA matrix in results.json, its heatmap in the report, reused on a warm rerun."""
import json

import numpy as np
import pytest

from tests.conftest import make_npz
from transferlab.classifiers import similarity
from transferlab.classifiers.similarity import cka_matrix
from transferlab.pipeline.plots import similarity_section
from transferlab.pipeline.sweep import SweepConfig, sweep


@pytest.fixture
def tiny(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=30, size=16)
    return dict(data=f"npz:{npz}", backbone="lite0", heads="logreg", layers="blocks.2,bn1,bn2",
                image_size="32", out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), n_jobs=1)


def test_sweep_stores_the_cka_matrix_and_draws_its_heatmap_then_reuses_it(tiny, tmp_path, monkeypatch):
    sweep(SweepConfig(**tiny), progress=False)
    out = tmp_path / "run"
    saved = json.loads((out / "results.json").read_text())
    (entry,) = saved["layer_similarity"]
    assert entry["layers"] == ["bn1", "blocks.2", "bn2"]  # depth order, as the cache lists them
    direct = cka_matrix(entry["cache_file"])
    np.testing.assert_allclose(np.array(entry["matrix"], dtype=float), np.array(direct["matrix"], dtype=float),
                               rtol=1e-12)
    assert entry["n_rows"] == 60 and entry["matrix"][0][0] == 1.0
    report = (out / "report.md").read_text()
    assert "## Layer similarity" in report and "![layer similarity](layer_similarity.png)" in report
    assert (out / "layer_similarity.png").stat().st_size > 0
    section = report.split("## Layer similarity")[1].split("\n## ")[0]
    assert "data:image/png" not in section  # report.md links the picture (only the gallery embeds thumbnails)
    assert (out / "report.html").read_text().count("data:image/png") >= 2

    def boom(*a, **k):
        raise AssertionError("a warm rerun measured CKA again")

    monkeypatch.setattr(similarity, "cka_matrix", boom)
    again = sweep(SweepConfig(**tiny), progress=False)
    assert again["layer_similarity"] == saved["layer_similarity"]


def test_a_matrix_that_could_not_be_measured_is_said_and_no_stale_picture_is_kept(tmp_path):
    (tmp_path / "layer_similarity.png").write_bytes(b"old")
    lines = similarity_section(tmp_path, {"layer_similarity": [{"cache_file": "x.h5", "error": "layer 'a' holds NaN"}]})
    assert lines[0] == "## Layer similarity" and "Not measured: layer 'a' holds NaN" in "\n".join(lines)
    assert not (tmp_path / "layer_similarity.png").exists()
    assert similarity_section(tmp_path, {}) == []


def test_the_section_names_the_most_alike_and_the_most_changed_neighbours(tmp_path):
    entry = {"cache_file": "/c/d.h5", "layers": ["a", "b", "c`|"], "split": "train", "n_rows": 9,
             "matrix": [[1.0, 0.9, 0.2], [0.9, 1.0, 0.3], [0.2, 0.3, 1.0]]}
    text = "\n".join(similarity_section(tmp_path, {"layer_similarity": [entry]}))
    assert "Most alike neighbours: `a` and `b` (0.90)" in text and "(0.30)" in text
    assert "c`|" not in text.replace("``c`|``", "")  # the data string goes through md_code's escaping
    assert (tmp_path / "layer_similarity.png").stat().st_size > 0
