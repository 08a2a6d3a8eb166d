"""A results row's key holds everything that decides it: rows of other data never show as current, rows
still valid stay whatever else is asked, and stale rows come back only when their whole key is valid again."""
import numpy as np
from PIL import Image

from tests.conftest import make_npz
from transferlab.pipeline.results import (
    STALE_FILE,
    CurrentRun,
    ProbeSettings,
    append_row,
    read_rows,
    reconcile,
    why_not_current,
)
from transferlab.pipeline.sweep import SweepConfig, sweep


def _folder(root, x, y):
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(x[split], y[split])):
            d = root / split / f"c{label}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i}.png")
    return root


def _cfg(tmp_path, data, **kw):
    return SweepConfig(**{"data": data, "heads": "knn", "layers": "bn1,bn2", "image_size": "32",
                          "out": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"), "n_jobs": 1, **kw})


def test_deleting_training_images_refits_every_row(tmp_path):
    arrays = np.load(make_npz(tmp_path / "d.npz", n_train=60, n_test=15))
    folder = _folder(tmp_path / "imgs", {"train": arrays["x_train"], "test": arrays["x_test"]},
                     {"train": arrays["y_train"], "test": arrays["y_test"]})
    first = sweep(_cfg(tmp_path, f"folder:{folder}"), progress=False)
    assert {(r["n_train"], r["n_val"]) for r in first["rows"]} == {(48, 12)}
    for p in sorted((folder / "train").rglob("*.png"))[::3]:  # delete 20 of the 60 training images
        p.unlink()
    notes = []
    second = sweep(_cfg(tmp_path, f"folder:{folder}"), progress=False, log=notes.append)
    assert second["timing"]["fits_run"] == 2 and second["stale_rows_moved"] == 2
    (moved,) = [n for n in notes if n.startswith("note: moved")]
    assert f"2 the data changed (--data folder:{folder}: fingerprint" in moved, moved
    assert {(r["n_train"], r["n_val"]) for r in second["rows"]} == {(32, 8)}
    assert set(r["cache_file"] for r in second["rows"]) != set(r["cache_file"] for r in first["rows"])
    assert len(read_rows(tmp_path / "run" / STALE_FILE)) == 2


def test_another_data_set_into_the_same_out_never_reports_the_old_numbers(tmp_path):
    a = make_npz(tmp_path / "a.npz", n_train=30, n_test=12, seed=1)
    sweep(_cfg(tmp_path, f"npz:{a}"), progress=False)
    notes = []
    summary = sweep(_cfg(tmp_path, "digits"), progress=False, log=notes.append)
    assert {r["data"] for r in summary["rows"]} == {"digits"} and len(summary["rows"]) == 2
    assert f"2 other data (--data npz:{a}, now digits)" in "\n".join(notes)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Data `digits`" in report and "a.npz" not in report
    assert {r["data"] for r in read_rows(tmp_path / "run" / STALE_FILE)} == {f"npz:{a}"}


def test_a_warm_rerun_fits_nothing_and_a_torn_last_line_is_refitted(tmp_path):
    a = make_npz(tmp_path / "a.npz", n_train=30, n_test=12)
    sweep(_cfg(tmp_path, f"npz:{a}"), progress=False)
    again = sweep(_cfg(tmp_path, f"npz:{a}"), progress=False)
    assert again["timing"]["fits_run"] == 0 and again["stale_rows_moved"] == 0
    csv_path = tmp_path / "run" / "results.csv"
    text = csv_path.read_text()
    csv_path.write_text(text[: len(text) - 40])  # the last row cut mid-line, as a full disk leaves it
    notes = []
    healed = sweep(_cfg(tmp_path, f"npz:{a}"), progress=False, log=notes.append)
    assert healed["timing"]["fits_run"] == 1 and healed["stale_rows_moved"] == 1
    assert "1 torn (a run killed while appending)" in "\n".join(notes)
    assert len(read_rows(csv_path)) == 2 and all(r["row_key"] for r in read_rows(csv_path))


def test_another_grid_is_another_row_and_going_back_takes_the_old_rows_back_unfitted(tmp_path):
    a = make_npz(tmp_path / "a.npz", n_train=30, n_test=12)
    csv_path = tmp_path / "run" / "results.csv"
    sweep(_cfg(tmp_path, f"npz:{a}"), progress=False)
    default_rows = read_rows(csv_path)
    notes = []
    full = sweep(_cfg(tmp_path, f"npz:{a}", full_grid=True), progress=False, log=notes.append)
    assert full["timing"]["fits_run"] == 2 and full["stale_rows_moved"] == 2
    assert "2 another grid (--full-grid: default, now full)" in "\n".join(notes)
    full_rows = read_rows(csv_path)
    notes = []
    back = sweep(_cfg(tmp_path, f"npz:{a}"), progress=False, log=notes.append)
    assert back["timing"]["fits_run"] == 0 and back["stale_rows_moved"] == 2 and back["stale_rows_taken_back"] == 2
    assert read_rows(csv_path) == default_rows  # the very rows, fit_seconds included: nothing refitted
    assert read_rows(csv_path.with_name(STALE_FILE)) == full_rows  # each row in one file, once
    assert any(n.startswith("note: took back 2 row(s)") for n in notes), notes
    again = sweep(_cfg(tmp_path, f"npz:{a}", full_grid=True), progress=False, log=lambda m: None)
    assert again["timing"]["fits_run"] == 0 and read_rows(csv_path) == full_rows


def test_other_heads_or_layers_keep_the_rows_still_valid_and_the_union_refits_nothing(tmp_path):
    a = make_npz(tmp_path / "a.npz", n_train=30, n_test=12)
    csv_path = tmp_path / "run" / "results.csv"
    sweep(_cfg(tmp_path, f"npz:{a}"), progress=False)
    knn = read_rows(csv_path)
    ridge = sweep(_cfg(tmp_path, f"npz:{a}", heads="ridge", layers="bn2"), progress=False)
    assert ridge["timing"]["fits_run"] == 1 and ridge["stale_rows_moved"] == 0
    rows = read_rows(csv_path)
    assert rows[:2] == knn and [(r["head"], r["layer"]) for r in rows[2:]] == [("ridge", "bn2")]
    assert not (tmp_path / "run" / STALE_FILE).exists()
    union = sweep(_cfg(tmp_path, f"npz:{a}", heads="knn,ridge"), progress=False)
    assert union["timing"]["fits_run"] == 1 and union["timing"]["fits_reused"] == 3  # only ridge at bn1 is new
    assert read_rows(csv_path)[:3] == rows  # the earlier rows untouched, fit_seconds included
    assert sorted((r["head"], r["layer"]) for r in union["rows"]) == [
        ("knn", "bn1"), ("knn", "bn2"), ("ridge", "bn1"), ("ridge", "bn2")]


def _probe_row(settings, **kw):
    row = {"backbone": "lite0", "weights": "imagenet", "pool": "gap", "image_size": "32", "layer": "bn1",
           "head": "knn", "shots": "", "repeat": "1", "grid": settings.grid, "val_fraction": str(settings.val_fraction),
           "seed": str(settings.seed + 1), "cache_key": "C", "data": "digits", "data_fingerprint": "F"}
    row["row_key"] = settings.key("C", "bn1", "knn", 0, 1)
    row.update(kw)
    return row


def test_a_row_is_current_only_when_its_whole_key_is_and_the_reason_names_the_setting():
    s = ProbeSettings(None, "default", 0.2, 0)
    now = CurrentRun("digits", "F", {("lite0", "imagenet", "gap", "32"): "C"}, s)
    assert why_not_current(_probe_row(s), now) is None
    assert why_not_current(_probe_row(s, head="svm"), now) is not None  # its key was computed for knn
    changed = {
        "another --seed (5, now 0)": ProbeSettings(None, "default", 0.2, 5),
        "another --val-fraction (0.3, now 0.2)": ProbeSettings(None, "default", 0.3, 0),
        "another grid (--full-grid: full, now default)": ProbeSettings(None, "full", 0.2, 0),
        "another --preprocessing (now per head)": ProbeSettings("standardize", "default", 0.2, 0),
    }
    for reason, then in changed.items():
        assert why_not_current(_probe_row(then), now) == reason
    assert why_not_current(_probe_row(s, backbone="lite1"), now) == (
        "features this sweep does not compute (--backbone lite1)")
    assert why_not_current(_probe_row(s, cache_key="D"), now).startswith("the features of lite0/imagenet changed")
    assert why_not_current(_probe_row(s, data_fingerprint="G"), now).startswith("the data changed (--data digits")
    assert why_not_current(_probe_row(s, row_key=""), now).startswith("torn")
    ft = {"head": "finetune:head", "row_key": "K", "data": "digits", "data_fingerprint": "F"}
    assert why_not_current(ft, now) is None and why_not_current({**ft, "data_fingerprint": "G"}, now)


def test_reconcile_takes_back_one_copy_per_key_and_never_a_torn_row(tmp_path):
    path = tmp_path / "results.csv"
    for key in ("keep", "drop"):
        append_row(path, {"layer": key, "row_key": key})
    for key, test in (("back", "0.1"), ("back", "0.2"), ("old", "0.3"), ("keep", "0.4"), ("", "0.5")):
        append_row(path.with_name(STALE_FILE), {"layer": key or "torn", "row_key": key, "test_accuracy": test})
    moved, taken = reconcile(path, lambda r: None if r["row_key"] in ("keep", "back") else "gone")
    assert [(r["row_key"], why) for r, why in moved] == [("drop", "gone")]
    assert [(r["row_key"], r["test_accuracy"]) for r in taken] == [("back", "0.2")]
    assert [r["row_key"] for r in read_rows(path)] == ["keep", "back"]
    assert [(r["layer"], r["row_key"]) for r in read_rows(path.with_name(STALE_FILE))] == [
        ("old", "old"), ("torn", ""), ("drop", "drop")]


def test_append_row_writes_one_whole_line(tmp_path):
    path = tmp_path / "r.csv"
    append_row(path, {"layer": "a,b", "head": "knn", "row_key": "k1"})
    append_row(path, {"layer": "c", "head": "svm", "row_key": "k2"})
    assert [(r["layer"], r["row_key"]) for r in read_rows(path)] == [("a,b", "k1"), ("c", "k2")]


def test_a_flat_photo_folder_is_split_recorded_and_keyed_by_its_split(tmp_path):
    import json

    from tests.conftest import run_cli

    arrays = np.load(make_npz(tmp_path / "d.npz", n_train=30, n_test=0))
    for i, (img, label) in enumerate(zip(arrays["x_train"], arrays["y_train"])):
        d = tmp_path / "photos" / f"kind{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    args = ["sweep", "--data", tmp_path / "photos", "--heads", "knn", "--layers", "bn2", "--image-size", "32",
            "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "--workers", "1", "--quiet"]
    out = run_cli(*args, "--test-fraction", "0.2")
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["data_layout"] == "flat <class>/ folders; test split off train: 0.2 of the images, stratified, seed 0"
    assert saved["class_names"] == ["kind0", "kind1", "kind2"]
    # escaped for Markdown and HTML: the page shows "<class>" (raw, a browser took it for a tag and dropped it)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Data layout: flat &lt;class&gt;/ folders; test split off train" in report
    assert "Data layout: flat &lt;class&gt;/ folders" in (tmp_path / "run" / "report.html").read_text()
    (row,) = read_rows(tmp_path / "run" / "results.csv")
    assert int(row["n_train"]) + int(row["n_val"]) == 24  # 30 images, 6 held out as test
    out = run_cli(*args, "--test-fraction", "0.3")
    assert out.returncode == 0, out.stderr
    assert len(read_rows(tmp_path / "run" / STALE_FILE)) == 1  # another split: the old row is not current
    (row,) = read_rows(tmp_path / "run" / "results.csv")
    assert int(row["n_train"]) + int(row["n_val"]) == 21


def test_a_torn_last_line_is_cut_before_the_next_append_never_glued_to_it(tmp_path):
    path = tmp_path / "r.csv"
    append_row(path, {"layer": "bn1", "test_accuracy": 0.3, "row_key": "k1"})
    whole = path.read_bytes()
    with open(path, "ab") as fh:  # what a kill -9 / power loss mid-append leaves: no newline
        fh.write(b"lite0,imagenet,gap,32,bn2,8,1.0,1280,logreg,,,,0,0,0.61,0.52")
    assert append_row(path, {"layer": "bn2", "test_accuracy": 0.495, "row_key": "k2"}) is True
    rows = read_rows(path)
    got = [(r["layer"], r["test_accuracy"], r["row_key"]) for r in rows]
    assert got == [("bn1", "0.3", "k1"), ("bn2", "0.495", "k2")]
    assert path.read_bytes().startswith(whole) and b"0.52lite0" not in path.read_bytes()
    assert append_row(path, {"layer": "x", "row_key": "k3"}) is False


def test_an_append_that_fails_half_way_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    import errno
    import os

    from transferlab.pipeline import results

    path = tmp_path / "r.csv"
    append_row(path, {"layer": "bn1", "row_key": "k1"})
    before = path.read_bytes()
    real_write = os.write

    def full_disk(fd, data):  # the disk fills half way through the line
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "write", full_disk)
    try:
        append_row(path, {"layer": "bn2", "row_key": "k2"})
        raise AssertionError("the failed append did not raise")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_row(path, {"layer": "bn2", "row_key": "k2"})
    assert [r["row_key"] for r in read_rows(path)] == ["k1", "k2"]


def test_two_sweeps_into_one_out_folder_write_each_row_once(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    npz = make_npz(tmp_path / "d.npz", n_train=24, n_test=12, size=8)
    args = ["sweep", "--data", f"npz:{npz}", "--heads", "logreg", "--layers", "bn1,bn2", "--image-size", "32",
            # not --quiet: the wait is said
            "--out", tmp_path / "run", "--cache-dir", tmp_path / "cache", "--n-jobs", "1"]
    procs = [subprocess.Popen([sys.executable, "-m", "transferlab", *map(str, args)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = read_rows(tmp_path / "run" / "results.csv")
    assert sorted(r["layer"] for r in rows) == ["bn1", "bn2"]  # not four: no fake repeats
    assert len({r["row_key"] for r in rows}) == 2
    assert any("waiting" in err for _, err in outs)  # one of them waited for the other's lock


def _csv_rows():
    """Rows as results.csv holds them (strings), listed out of depth order, layer names that sort wrong."""
    rows = []
    for layer, depth in (("bn2", 8), ("blocks.5", 6), ("bn1", 0), ("blocks.2", 3)):
        for head, val in (("logreg", 0.5 + depth / 100), ("knn", 0.4 + depth / 100)):
            rows.append({"backbone": "lite0", "weights": "imagenet", "layer": layer, "depth": str(depth),
                         "rel_depth": str(depth / 8), "dim": "40", "head": head, "params": '{"C": 0.1}',
                         "shots": "", "repeat": "0", "seed": "0", "val_accuracy": str(val),
                         "test_accuracy": str(val - 0.01), "fit_seconds": "0.5", "n_train": "48", "n_val": "12",
                         "image_size": "32", "val_fraction": "0.2", "row_key": f"{layer}-{head}"})
    rows.append({**rows[0], "shots": "5", "val_accuracy": "", "row_key": "five"})
    return rows


def test_rows_are_typed_layer_in_depth_order_params_a_dict_shots_zero_for_all():
    import pandas as pd

    from transferlab.pipeline.results import ALL_SHOTS, SweepResult

    res = SweepResult({"rows": _csv_rows()})
    df = res.rows
    assert df["layer"].cat.ordered and list(df["layer"].cat.categories) == ["bn1", "blocks.2", "blocks.5", "bn2"]
    assert list(df.sort_values("layer")["layer"].drop_duplicates()) == ["bn1", "blocks.2", "blocks.5", "bn2"]
    assert df["params"][0] == {"C": 0.1}
    assert str(df["shots"].dtype) == "Int64" and df["shots"].tolist() == [ALL_SHOTS] * 8 + [5] and ALL_SHOTS == 0
    assert df["val_accuracy"].dtype.kind == "f" and pd.isna(df["val_accuracy"].iloc[-1])
    assert list(df["head"][:2]) == ["logreg", "knn"] and len(df.head(3)) == 3  # column by key, method by name
    first = res["rows"][0]
    assert (first["depth"], first["val_accuracy"], first["shots"], first["params"], first["n_val"]) == (
        8, 0.58, 0, {"C": 0.1}, 12)
    assert res["rows"][-1]["shots"] == 5 and res["rows"][-1]["val_accuracy"] is None
    assert res.summary["rows"][0]["depth"] == "8"  # the results.json content stays as the files hold it


def test_the_readme_python_example_prints_the_depth_curve_in_depth_order(capsys):
    import re

    from tests.conftest import ROOT
    from transferlab.pipeline.results import SweepResult

    readme = (ROOT / "README.md").read_text()
    (line,) = [l for l in readme.splitlines() if l.startswith("print(res.rows.groupby(")]
    exec(line, {"res": SweepResult({"rows": _csv_rows()})})
    printed = capsys.readouterr().out.splitlines()
    layers = [m.group(1) for l in printed if (m := re.match(r"(bn\d|blocks\.\d)\s", l))]
    assert layers == ["bn1", "blocks.2", "blocks.5", "bn2"], printed
    means = {l.split()[0]: float(l.split()[1]) for l in printed if re.match(r"(bn\d|blocks\.\d)\s", l)}
    vals = [float(r["val_accuracy"]) for r in _csv_rows() if r["layer"] == "bn2" and r["val_accuracy"]]
    assert abs(means["bn2"] - sum(vals) / len(vals)) < 1e-6  # the mean over the rows that have one
