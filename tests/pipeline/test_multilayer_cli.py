"""The multi-layer head from the command line: train --layer all / a list, predict from its saved head."""
import h5py
import numpy as np
import pytest

from tests.conftest import make_npz, run_cli, write_pngs
from transferlab.features import extract
from transferlab.pipeline.predict import predict_rows


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, lite0):
    tmp = tmp_path_factory.mktemp("multi")
    npz = make_npz(tmp / "d.npz", n_train=60, n_test=24, size=16)
    return npz, extract(f"npz:{npz}", lite0, layers="blocks.1,blocks.2,bn2", image_size=32, cache_dir=tmp / "c",
                        progress=False)


@pytest.fixture
def cache(tmp_path, extracted):
    return (tmp_path, *extracted)


def test_train_layer_all_then_predict_reads_every_chosen_layer_in_one_pass(cache):
    from transferlab.classifiers import load_head

    tmp_path, npz, path = cache
    out = run_cli("train", "--features", path, "--layer", "all", "--head", "multi", "--out", tmp_path / "m")
    assert out.returncode == 0, out.stderr
    head, meta = load_head(tmp_path / "m")
    assert meta["head"] == "multi" and meta["layers"] and set(meta["layers"]) <= {"blocks.1", "blocks.2", "bn2"}
    assert out.stdout.startswith("+".join(meta["layers"]) + "  multi  params=")
    with h5py.File(path, "r") as f:
        rows = np.concatenate([f[f"test/features/{n}"][()].astype(np.float32) for n in meta["layers"]], 1)
    files = write_pngs(np.load(npz)["x_test"], tmp_path)
    got = predict_rows(tmp_path / "m", files, batch_size=7, progress=False)  # the dicts (predict: a DataFrame)
    assert [g["label"] for g in got] == list(head.predict(rows))
    acc = np.mean([g["label"] == y for g, y in zip(got, np.load(npz)["y_test"])])
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-9)
    cli = run_cli("predict", "--model", tmp_path / "m", *files[:2])
    assert cli.returncode == 0, cli.stderr
    assert len(cli.stdout.strip().splitlines()) == 2


def test_train_with_a_comma_list_chooses_among_those_layers_only(cache):
    from transferlab.classifiers import read_head_meta

    tmp_path, _, path = cache
    out = run_cli("train", "--features", path, "--layer", "blocks.1,bn2", "--out", tmp_path / "m2", "--quiet")
    assert out.returncode == 0, out.stderr
    meta = read_head_meta(tmp_path / "m2")
    assert meta["candidates"] == ["blocks.1", "bn2"] and set(meta["layers"]) <= {"blocks.1", "bn2"}


@pytest.mark.parametrize("args,message", [
    (["--layer", "all", "--head", "svm"], "pass --head multi"),
    (["--layer", "all", "--head", "multi", "--pca", "8"], "drop --preprocessing and --pca"),
    (["--layer", "blocks.1,nope", "--head", "multi"], "valid layers"),
])
def test_bad_multi_layer_requests_are_one_line_errors(cache, args, message):
    tmp_path, _, path = cache
    out = run_cli("train", "--features", path, *args, "--out", tmp_path / "bad")
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bad" / "head.json").exists()


def test_a_folder_is_refused_for_the_multi_layer_head(cache):
    tmp_path = cache[0]
    out = run_cli("train", "--features", tmp_path, "--layer", "all", "--head", "multi")
    assert out.returncode == 2 and "needs a cache file" in out.stderr


def test_predict_from_a_head_over_two_layers_matches_it_on_their_cached_rows(cache):
    from transferlab import train_multilayer
    from transferlab.classifiers import load_head

    tmp_path, npz, path = cache
    row = train_multilayer(path, ["bn2", "blocks.1"], out=tmp_path / "two", selection="all")
    assert row["layers"] == ["blocks.1", "bn2"]  # depth order, as the saved head reads them
    head, _ = load_head(tmp_path / "two")
    with h5py.File(path, "r") as f:
        rows = np.concatenate([f[f"test/features/{n}"][()].astype(np.float32) for n in row["layers"]], 1)
    got = predict_rows(tmp_path / "two", write_pngs(np.load(npz)["x_test"], tmp_path), batch_size=5,
                       progress=False)
    np.testing.assert_allclose([g["score"] for g in got], head.predict_proba(rows).max(1), rtol=1e-6)
    assert [g["label"] for g in got] == list(head.predict(rows))
