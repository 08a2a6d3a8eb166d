import h5py
import numpy as np
import pytest
from PIL import Image

from transferlab.features import extract
from transferlab.pipeline.predict import predict
from tests.conftest import make_npz, run_cli, write_pngs


@pytest.fixture
def trained(tmp_path, lite0):
    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=24, size=16)
    path = extract(f"npz:{npz}", lite0, layers="blocks.2,bn2", image_size=32, cache_dir=tmp_path / "c", progress=False)
    out = run_cli("train", "--features", path, "--layer", "blocks.2", "--head", "logreg", "--out", tmp_path / "head")
    assert out.returncode == 0, out.stderr
    assert "test_accuracy=" in out.stdout
    return tmp_path, npz, path


def test_predict_on_png_files_matches_the_head_on_cached_rows(trained):
    from transferlab.classifiers import load_head

    tmp_path, npz, path = trained
    x = np.load(npz)["x_test"]
    files = write_pngs(x, tmp_path)
    head, meta = load_head(tmp_path / "head")
    with h5py.File(path, "r") as f:
        rows = f["test/features/blocks.2"][()].astype(np.float32)
    expected = head.predict(rows)
    got = predict(tmp_path / "head", files, batch_size=7, progress=False)
    assert [g["label"] for g in got] == list(expected)
    assert [g["class"] for g in got] == [f"class{int(c)}" for c in expected]
    acc = np.mean([g["label"] == y for g, y in zip(got, np.load(npz)["y_test"])])
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-9)
    cli = run_cli("predict", "--model", tmp_path / "head", *files[:3])
    assert cli.returncode == 0, cli.stderr
    lines = [l.split("\t") for l in cli.stdout.strip().splitlines()]
    assert [(p, c) for p, c, _ in lines] == [(str(f), g["class"]) for f, g in zip(files[:3], got)]


def test_tampered_head_and_unreadable_image_are_refused_with_exit_2(trained):
    tmp_path, _, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = run_cli("predict", "--model", tmp_path / "head", bad)
    assert out.returncode == 2 and "bad.png" in out.stderr and "Traceback" not in out.stderr
    joblib_file = tmp_path / "head" / "head.joblib"
    joblib_file.write_bytes(joblib_file.read_bytes() + b"\0")
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ok)
    out = run_cli("predict", "--model", tmp_path / "head", ok)
    assert out.returncode == 2 and "sha256" in out.stderr and "Traceback" not in out.stderr


def test_an_edited_head_json_is_refused_and_a_signed_wrong_width_is_caught_before_predicting(trained):
    import json

    from transferlab.classifiers.persistence import meta_sha256

    tmp_path, _, _ = trained
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    meta_path = tmp_path / "head" / "head.json"
    meta = json.loads(meta_path.read_text())
    assert meta["meta_sha256"] == meta_sha256(meta) and meta["layer"] == "blocks.2" and meta["dim"] == 40
    meta["layer"] = "bn2"
    meta_path.write_text(json.dumps(meta))  # an accidental edit: the hash no longer matches
    out = run_cli("predict", "--model", tmp_path / "head", img)
    assert out.returncode == 2 and "was changed after it was saved" in out.stderr and "Traceback" not in out.stderr
    meta["meta_sha256"] = meta_sha256(meta)  # re-signed (what a tampering author can do): the width still disagrees
    meta_path.write_text(json.dumps(meta))
    out = run_cli("predict", "--model", tmp_path / "head", img)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "layer 'bn2' gives 1280 features but the head" in out.stderr and "takes 40" in out.stderr
