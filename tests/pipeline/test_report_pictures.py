"""The report's pictures and HTML page, the chosen head, and results in Python."""
import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import transferlab
from tests.conftest import headless_browser, make_npz, run_cli
from transferlab.pipeline.report import refresh_report
from transferlab.pipeline.results import append_row, load_results, read_rows


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    npz = make_npz(tmp / "d.npz", n_train=60, n_test=30, size=16)
    res = transferlab.sweep(data=f"npz:{npz}", heads="logreg,knn", layers="bn1,blocks.2,blocks.5,bn2",
                            image_size="32", out=str(tmp / "run"), cache_dir=str(tmp / "cache"), n_jobs=1,
                            progress=False, log=lambda m: None)
    return tmp, res


def test_sweep_returns_a_dataframe_and_load_results_reads_it_back(swept):
    tmp, res = swept
    df = res.rows
    assert len(df) == 8 and df["test_accuracy"].dtype.kind == "f" and df["depth"].dtype.kind in "if"
    assert res.recommendation == res["decision"] and res.recommendation["strategy"] in (
        "linear-probe", "generic-features", "fine-tune", "from-scratch")
    assert res["rows"][0]["layer"] == "bn1"  # the old dict access still works
    back = load_results(tmp / "run")
    assert back.rows[["layer", "head", "test_accuracy"]].equals(df[["layer", "head", "test_accuracy"]])
    assert back.config["heads"] == ["logreg", "knn"]
    assert transferlab.load_results(tmp / "run").timing == res.timing
    with pytest.raises(transferlab.UserInputError, match="no finished sweep"):
        load_results(tmp)


def _recommended(out):
    """The row the sweep's decision names: at its chosen layer, the head best on validation (ties: the first)."""
    import json

    decision = json.loads((out / "results.json").read_text())["decision"]
    rows = [r for r in read_rows(out / "results.csv") if r["layer"] == decision["chosen_layer"]]
    return decision, max(rows, key=lambda r: float(r["val_accuracy"]))


def test_one_voice_headline_chosen_head_train_best_and_the_recommendation_name_one_layer(swept):
    import json

    tmp, res = swept
    out = tmp / "run"
    decision, row = _recommended(out)
    assert res.recommendation["chosen_layer"] == decision["chosen_layer"] == row["layer"]
    head_json = json.loads((out / "chosen_head" / "head.json").read_text())
    assert (head_json["layer"], head_json["head"]) == (row["layer"], row["head"])
    report = (out / "report.md").read_text()
    headline = report.split("## Decision", 1)[1].strip().splitlines()[0]
    assert f"at `{row['layer']}` with the {row['head']} head" in headline and decision["strategy"] in headline
    assert report.count("**Recommendation:") == 1 and "Chosen on validation:" not in report
    if "On test, reported and never used to choose" in report:  # the test gap is given with its noise
        assert "unpaired, on 30 test rows)" in report
    best = run_cli("train", "--features", out, "--layer", "best", "--head", row["head"], "--out", tmp / "bh", "--quiet")
    assert best.returncode == 0, best.stderr
    assert best.stdout.split()[:2] == [row["layer"], row["head"]]


def test_confusion_matrix_is_of_the_recommended_head(swept):
    tmp, _ = swept
    out = tmp / "run"
    _, row = _recommended(out)
    report = (out / "report.md").read_text()
    assert f"`{row['layer']}` of lite0/imagenet with the {row['head']} head" in report
    # the per-class table: its support sums to the test split, and its accuracies give the row's test accuracy
    # (class, test images, precision, recall = per-class accuracy, its se, F1)
    table = re.findall(r"^\| (class\d) \| (\d+) \| (?:[0-9.]+|n/a) \| ([0-9.]+) \| [0-9.]+ \| (?:[0-9.]+|n/a) \|$",
                       report, flags=re.M)
    assert [t[0] for t in table] == ["class0", "class1", "class2"] and sum(int(t[1]) for t in table) == 30
    correct = sum(int(n) * float(a) for _, n, a in table)
    assert correct / 30 == pytest.approx(float(row["test_accuracy"]), abs=2e-3)
    assert (out / "chosen_head" / "head.safetensors").is_file()


def test_predict_on_a_sweep_folder_uses_its_chosen_head(swept):
    import h5py

    from tests.conftest import write_pngs
    from transferlab.classifiers import load_head
    from transferlab.pipeline.predict import predict_rows

    tmp, _ = swept
    out = tmp / "run"
    head, meta = load_head(out / "chosen_head")
    x = np.load(tmp / "d.npz")["x_test"][:6]
    files = write_pngs(x, tmp)
    got = predict_rows(out, files, progress=False)
    with h5py.File(meta["features_file"], "r") as f:
        rows = f[f"test/features/{meta['layer']}"][:6].astype(np.float32)
    assert [g["label"] for g in got] == list(head.predict(rows))


def test_train_layer_best_picks_the_recommended_layer_for_that_head(swept):
    tmp, _ = swept
    decision, _ = _recommended(tmp / "run")
    best = next(r for r in read_rows(tmp / "run" / "results.csv")
                if r["head"] == "knn" and r["layer"] == decision["chosen_layer"])
    out = run_cli("train", "--features", tmp / "run", "--layer", "best", "--head", "knn", "--out", tmp / "k")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == best["layer"] and f"--layer best: {best['layer']}" in out.stderr
    assert "the recommended layer" in out.stderr
    assert f"test_accuracy={float(best['test_accuracy']):.4f}" in out.stdout
    bad = run_cli("train", "--features", tmp / "run", "--layer", "best", "--head", "svm")
    assert bad.returncode == 2 and "no 'svm' rows" in bad.stderr
    bad = run_cli("train", "--features", tmp / "cache", "--layer", "best")
    assert bad.returncode == 2 and "no sweep results" in bad.stderr


def test_train_layer_best_reuses_the_chosen_head_when_its_key_is_the_same_else_says_why(swept, monkeypatch):
    import json

    from transferlab import classifiers

    tmp, _ = swept
    chosen = tmp / "run" / "chosen_head"
    meta = json.loads((chosen / "head.json").read_text())

    def refit(*args, **kwargs):
        raise AssertionError("refitted the head chosen_head/ holds")

    monkeypatch.setattr(classifiers, "train_head", refit)
    out = run_cli("train", "--features", tmp / "run", "--layer", "best", "--head", meta["head"], "--out", tmp / "re")
    assert out.returncode == 0, out.stderr
    assert f"reused {chosen}: the sweep's fit of this very head (same key), not refitted" in out.stderr
    assert (tmp / "re" / "head.safetensors").read_bytes() == (chosen / "head.safetensors").read_bytes()
    assert json.loads((tmp / "re" / "head.json").read_text()) == meta
    assert f"test_accuracy={meta['test_accuracy']:.4f}" in out.stdout
    monkeypatch.undo()
    out = run_cli("train", "--features", tmp / "run", "--layer", "best", "--head", meta["head"], "--seed", "1",
                  "--out", tmp / "seed1")
    assert out.returncode == 0, out.stderr
    assert f"refitting: {chosen} holds this layer and head fitted with another --seed (0, now 1)" in out.stderr
    assert json.loads((tmp / "seed1" / "head.json").read_text())["seed"] == 1


def test_html_report_embeds_every_picture_and_finetune_rows_add_a_bar_chart(swept):
    tmp, _ = swept
    out = tmp / "run"
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page and 'src="depth_vs_accuracy.png"' not in page
    pngs = re.findall(r'<img (?!class="thumb")[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 3  # depth curve, confusion matrix and layer similarity (the gallery's thumbnails aside)
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not (out / "finetune.png").exists() and not (out / "learning_curve.png").exists()
    row = dict(read_rows(out / "results.csv")[0], head="finetune:last:2", test_accuracy="0.5", val_accuracy="0.5",
               row_key="ft-test", cache_file="", layer="bn2")
    append_row(out / "results.csv", row)
    refresh_report(out)
    assert (out / "finetune.png").stat().st_size > 0
    assert "![fine-tuning modes beside the best probe](finetune.png)" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert len(re.findall(r'<img (?!class="thumb")[^>]*src="data:image/png;base64', page)) == 4


def test_low_shot_sweep_draws_a_learning_curve_per_layer_group(tmp_path):
    from transferlab.pipeline.plots import learning_points

    npz = make_npz(tmp_path / "d.npz", n_train=60, n_test=30, size=16)
    res = transferlab.sweep(data=f"npz:{npz}", heads="knn", layers="bn1,blocks.2,bn2", image_size="32", shots="2,5",
                            out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), n_jobs=1, progress=False,
                            log=lambda m: None)
    pts = learning_points(res.summary["rows"])  # the rows as results.csv holds them
    rel = {r["layer"]: float(r["rel_depth"]) for r in res["rows"]}
    assert rel["bn1"] < 1 / 3 <= rel["blocks.2"] < 2 / 3 <= rel["bn2"]
    assert set(pts) == {("knn", "generic"), ("knn", "middle"), ("knn", "specialised")}
    spec = {float(r["test_accuracy"]) for r in res["rows"] if r["layer"] == "bn2" and r["shots"] == 5}
    assert pts[("knn", "specialised")][-1][:2] == (5, pytest.approx(spec.pop()))
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 0
    assert (tmp_path / "run" / "depth_vs_accuracy.png").is_file()  # the contract's plot: the 5-shot depth curve


@pytest.mark.skipif(headless_browser() is None, reason="no headless browser (chromium) on this machine; "
                                               "bench/render_report.sh installs one and renders the page")
def test_html_report_renders_in_a_headless_browser(swept):
    from PIL import Image

    tmp, _ = swept
    shot = tmp / "shot.png"
    subprocess.run([headless_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1100,1400", (tmp / "run" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (1400, 1100)
    assert img.std() > 10  # not a blank page: text, tables and the embedded plots drew
    assert (img < 128).mean() > 0.01


def test_a_removed_cache_file_leaves_a_report_that_says_so(swept, tmp_path):
    from transferlab.pipeline.results import write_rows

    tmp, _ = swept
    run = tmp_path / "run"
    shutil.copytree(tmp / "run", run)
    rows = read_rows(run / "results.csv")
    write_rows(run / "results.csv", [dict(r, cache_file=str(tmp_path / "gone.h5")) for r in rows])
    refresh_report(run)
    report = (run / "report.md").read_text()
    assert "confusion matrix could not be computed" in report and "gone.h5" in report
    assert not (run / "confusion.png").exists() and "confusion.png" not in report


def test_finetune_bars_carry_the_binomial_standard_error(tmp_path, monkeypatch):
    import matplotlib.axes

    from transferlab.pipeline.plots import finetune_bars

    seen = {}
    real = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, x, h, **kw: (seen.update(h=list(h), yerr=kw.get("yerr")),
                                                  real(self, x, h, **kw))[1])
    ft = [{"head": "finetune:last:2", "weights": "imagenet", "test_accuracy": "0.9"}]
    finetune_bars(ft, tmp_path / "f.png", {"head": "logreg", "layer": "bn2", "test_accuracy": "0.8"}, n_test=400)
    assert seen["h"] == [0.8, 0.9]
    assert seen["yerr"] == pytest.approx([0.02, 0.015])  # sqrt(.8*.2/400), sqrt(.9*.1/400)
    assert finetune_bars([], tmp_path / "g.png", None) is None and not (tmp_path / "g.png").exists()


def test_the_session_check_finds_a_sweep_that_speaks_with_two_voices(swept):
    import json
    import tempfile

    from tests.one_voice import every_problem, problems

    tmp, _ = swept
    assert problems(tmp / "run") == []
    with tempfile.TemporaryDirectory() as d:  # outside the session's root: the end-of-session check never sees it
        bad = Path(d) / "run"
        shutil.copytree(tmp / "run", bad)
        head = json.loads((bad / "chosen_head" / "head.json").read_text())
        other = next(x for x in ("bn1", "blocks.2", "blocks.5", "bn2") if x != head["layer"])
        (bad / "chosen_head" / "head.json").write_text(json.dumps({**head, "layer": other}))
        report = (bad / "report.md").read_text()
        (bad / "report.md").write_text(report + "\n**Recommendation: linear-probe, at `bn2`**\n")
        found = every_problem(Path(d))
        assert any(f"chosen_head/ holds {other!r}" in p for p in found)
        assert any("2 recommendation lines" in p for p in found)
