import h5py
import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_npz, run_cli, write_pngs
from transferlab.features import extract
from transferlab.pipeline.predict import predict, predict_rows
from transferlab.util import UserInputError


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
    got = predict_rows(tmp_path / "head", files, batch_size=7, progress=False)
    assert [g["label"] for g in got] == list(expected)
    assert [g["class"] for g in got] == [f"class{int(c)}" for c in expected]
    acc = np.mean([g["label"] == y for g, y in zip(got, np.load(npz)["y_test"])])
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-9)
    cli = run_cli("predict", "--model", tmp_path / "head", *files[:3])
    assert cli.returncode == 0, cli.stderr
    lines = [l.split("\t") for l in cli.stdout.strip().splitlines()]
    assert [tuple(l[:2]) for l in lines] == [(str(f), g["class"]) for f, g in zip(files[:3], got)]
    assert all(l[3] == "probability" for l in lines)


def test_folders_csv_top_k_and_an_unreadable_file_that_does_not_stop_the_run(trained):
    import csv
    import json

    from transferlab.classifiers import load_head

    tmp_path, npz, path = trained
    x = np.load(npz)["x_test"][:5]
    (tmp_path / "in" / "deeper").mkdir(parents=True)
    write_pngs(x[:3], tmp_path / "in")
    write_pngs(x[3:], tmp_path / "in" / "deeper", prefix="z")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = run_cli("predict", "--model", tmp_path / "head", tmp_path / "in", "--out", tmp_path / "p" / "pred.csv",
                  "--top-k", "2")
    assert out.returncode == 1, out.stderr  # finished, but not every file was read
    assert "skipped 1 unreadable file" in out.stderr and "bad.png" in out.stderr.splitlines()[-1]
    with open(tmp_path / "p" / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and [r["path"] for r in rows if r["error"]] == [str(bad)]
    good = [r for r in rows if not r["error"]]
    names = sorted(r["path"].rsplit("/", 1)[-1] for r in good)
    assert names == ["img0.png", "img1.png", "img2.png", "z0.png", "z1.png"]
    head, _ = load_head(tmp_path / "head")
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in good}
    with h5py.File(path, "r") as f:
        cached = f["test/features/blocks.2"][:5].astype(np.float32)
    proba = head.predict_proba(cached)
    for i, name in enumerate(["img0.png", "img1.png", "img2.png", "z0.png", "z1.png"]):
        r = by_name[name]
        top = np.argsort(-proba[i])[:2]
        assert json.loads(r["top_classes"]) == [f"class{c}" for c in top] and r["class"] == f"class{top[0]}"
        assert json.loads(r["top_scores"]) == pytest.approx(proba[i, top], abs=1e-5)
        assert float(r["probability"]) == pytest.approx(proba[i, top[0]], abs=1e-5) and r["margin"] == ""
    strict = run_cli("predict", "--model", tmp_path / "head", tmp_path / "in", "--strict")
    assert strict.returncode == 2 and "bad.png" in strict.stderr and "Traceback" not in strict.stderr


def test_a_head_without_probabilities_reports_margins(trained):
    from transferlab.classifiers import load_head, train_head

    tmp_path, npz, path = trained
    train_head(path, "blocks.2", "svm", out=tmp_path / "svm")
    files = write_pngs(np.load(npz)["x_test"][:4], tmp_path)
    got = predict_rows(tmp_path / "svm", files, progress=False, top_k=3)
    head, _ = load_head(tmp_path / "svm")
    with h5py.File(path, "r") as f:
        margins = head.decision_function(f["test/features/blocks.2"][:4].astype(np.float32))
    assert {g["score_kind"] for g in got} == {"margin"}
    assert [g["score"] for g in got] == pytest.approx(margins.max(axis=1), abs=1e-4)
    assert [len(g["top_k"]) for g in got] == [3] * 4


def test_train_without_out_saves_to_a_printed_default_folder(trained):
    tmp_path, _, path = trained
    out = run_cli("train", "--features", path, "--layer", "bn2", "--head", "logreg", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    saved = out.stdout.strip().splitlines()[-1].split()[1]
    assert saved.startswith("runs/heads/") and (tmp_path / saved).is_file()
    pred = run_cli("predict", "--model", (tmp_path / saved).parent, path.parent, cwd=tmp_path)  # a folder of .h5 files
    assert pred.returncode == 2 and "holds no images" in pred.stderr


def test_tampered_head_and_unreadable_image_are_refused_with_exit_2(trained):
    tmp_path, _, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    out = run_cli("predict", "--model", tmp_path / "head", bad)
    assert out.returncode == 2 and "bad.png" in out.stderr and "Traceback" not in out.stderr
    head_file = tmp_path / "head" / "head.safetensors"
    head_file.write_bytes(head_file.read_bytes() + b"\0")
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ok)
    out = run_cli("predict", "--model", tmp_path / "head", ok)
    assert out.returncode == 2 and "sha256" in out.stderr and "Traceback" not in out.stderr


def test_an_edited_head_json_is_refused_and_a_signed_wrong_width_is_caught_before_predicting(trained):
    import json

    from transferlab.util import meta_sha256

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


def test_predict_returns_the_csv_columns_as_a_dataframe(trained):
    """``transferlab.predict`` gives the table ``--out`` writes: same columns, same values, typed."""
    import csv
    import json

    import transferlab

    tmp_path, npz, path = trained
    (tmp_path / "in").mkdir()
    files = write_pngs(np.load(npz)["x_test"][:4], tmp_path / "in")
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    df = transferlab.predict(tmp_path / "head", [*files, bad], progress=False, top_k=2, out=tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(df.columns) == list(rows[0]) == ["path", "class", "probability", "margin", "top_classes",
                                                 "top_scores", "error"]
    assert list(df["path"]) == [r["path"] for r in rows] == [str(f) for f in [*files, bad]]
    good, err = df.iloc[:4], df.iloc[4]
    assert list(good["class"]) == [r["class"] for r in rows[:4]]
    assert list(good["probability"]) == pytest.approx([float(r["probability"]) for r in rows[:4]], abs=1e-6)
    assert good["margin"].isna().all() and good["error"].isna().all()
    assert list(good["top_classes"]) == [json.loads(r["top_classes"]) for r in rows[:4]]
    assert [len(s) for s in good["top_scores"]] == [2] * 4
    assert np.allclose(np.stack(good["top_scores"]), [json.loads(r["top_scores"]) for r in rows[:4]], atol=1e-6)
    rows_api = predict_rows(tmp_path / "head", files, progress=False, top_k=2)
    assert list(good["class"]) == [r["class"] for r in rows_api]
    assert err["error"] == rows[4]["error"] and "bad.png" in err["error"] and err[["class"]].isna().all()
    assert np.isnan(err["probability"]) and err["top_classes"] == []


def test_a_model_folder_that_holds_no_model_names_the_three_kinds_it_may_be(trained):
    tmp_path, npz, path = trained
    (tmp_path / "one").mkdir()
    files = write_pngs(np.load(npz)["x_test"][:1], tmp_path / "one")
    (tmp_path / "empty").mkdir()
    for model, what in ((tmp_path / "nonexistent", "does not exist"), (tmp_path / "empty", "holds no saved model")):
        res = run_cli("predict", "--model", model, *files)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith(f"error: --model {model} {what}: give a `train --out` folder"), res.stderr
        assert "a sweep folder (its chosen_head/)" in res.stderr and "`finetune --out` folder" in res.stderr
        with pytest.raises(UserInputError, match=what):
            predict(model, files)
