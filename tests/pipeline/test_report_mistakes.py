"""The report's view of the chosen head's mistakes (issue 23): per-class precision/recall/F1 and accuracy with its
standard error, the most-confused class pairs, the gallery of the most confidently wrong test images, and the
"All results" table (constants once, sorted by curve and depth, the recommended row marked)."""
import base64
import html
import html.parser
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import transferlab
from tests.conftest import headless_browser, make_npz
from transferlab.pipeline.mistakes import class_metrics, confused_pairs, thumbnail_png, worst_errors
from transferlab.pipeline.report import refresh_report, results_table

NAMES = ["<script>document.title='pwned'</script>", "a|b", "plain"]
FLIPPED = 10  # test rows whose label is moved to the next class: the chosen head gets these wrong


class Gallery(html.parser.HTMLParser):
    """The gallery's figures of a page: each ``{"src", "alt", "caption"}`` (the caption as text, lines joined by
    " / "), and every thumbnail's class attribute."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.figures, self._fig = [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self._fig = {"src": None, "alt": None, "caption": ""}
        elif tag == "img" and self._fig is not None:
            self._fig.update(src=attrs["src"], alt=attrs.get("alt"), cls=attrs.get("class"))
        elif tag == "br" and self._fig is not None:
            self._fig["caption"] += " / "

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figures.append(self._fig)
            self._fig = None

    def handle_data(self, data):
        if self._fig is not None:
            self._fig["caption"] += data


def _png_array(src: str) -> np.ndarray:
    from PIL import Image

    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep whose class names are HTML and a table pipe, and whose first test rows carry the wrong label."""
    tmp = tmp_path_factory.mktemp("mistakes")
    npz = make_npz(tmp / "made.npz", n_train=45, n_test=30, size=16)
    arrays = dict(np.load(npz))
    arrays["class_names"] = np.array(NAMES)
    arrays["y_test"][:FLIPPED] = (arrays["y_test"][:FLIPPED] + 1) % 3
    np.savez(tmp / "d.npz", **arrays)
    transferlab.sweep(data=f"npz:{tmp / 'd.npz'}", heads="logreg", layers="bn1,bn2", image_size="32",
                      out=str(tmp / "run"), cache_dir=str(tmp / "cache"), n_jobs=1, progress=False, log=lambda m: None)
    return tmp


def _chosen_predictions(run: Path):
    """The saved chosen head's test labels, predictions, probabilities and sample ids, read without the report."""
    import h5py

    from transferlab.classifiers import load_head

    head, meta = load_head(run / "chosen_head")
    with h5py.File(meta["features_file"], "r") as f:
        X = f[f"test/features/{meta['layer']}"][()].astype(np.float32)
        y, ids = f["test/labels"][()], f["test/ids"][()]
    return y, head.predict(X), head.predict_proba(X), ids


def test_class_metrics_are_sklearns_with_the_binomial_standard_error():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, 200))
    pred[pred == 3] = 0  # class 3 is never predicted: no precision, accuracy 0
    m = class_metrics(y, pred, 5)  # class 4 has no test images
    p, r, f, n = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    got = m["classes"]
    assert [c["support"] for c in got] == list(n) + [0]
    assert [c["precision"] for c in got[:3]] == pytest.approx(p[:3]) and np.isnan(got[3]["precision"])
    assert [c["recall"] for c in got[:4]] == pytest.approx(r) and [c["f1"] for c in got[:3]] == pytest.approx(f[:3])
    for k in range(3):  # per-class accuracy: the share of class k predicted right, se sqrt(p (1 - p) / n)
        acc = np.mean(pred[y == k] == k)
        assert 0 < acc < 1 and got[k]["accuracy"] == pytest.approx(acc)
        assert got[k]["accuracy_se"] == pytest.approx(np.sqrt(acc * (1 - acc) / n[k]))
    assert got[3]["accuracy"] == 0 and got[3]["accuracy_se"] == pytest.approx(1 / (2 * n[3]))  # never zero
    assert np.isnan(got[4]["accuracy"]) and np.isnan(got[4]["accuracy_se"])
    assert m["accuracy"] == pytest.approx(np.mean(y == pred))


def test_most_confused_pairs_of_a_hand_checked_matrix():
    cm = np.array([[5, 2, 0, 0],
                   [3, 4, 1, 0],
                   [0, 2, 6, 0],
                   [0, 0, 0, 9]])
    # off the diagonal: 3 (true 1 as 0), 2 (0 as 1), 2 (2 as 1), 1 (1 as 2); ties go to the earlier true class
    assert confused_pairs(cm) == [(1, 0, 3), (0, 1, 2), (2, 1, 2), (1, 2, 1)]
    assert confused_pairs(cm, top=2) == [(1, 0, 3), (0, 1, 2)]
    assert confused_pairs(np.diag([4, 5])) == []


def test_worst_errors_are_the_wrong_predictions_most_confident_first():
    y = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([1, 1, 0, 2, 0, 2])
    conf = np.array([0.6, 0.99, 0.9, 0.6, 0.8, 0.7])
    assert worst_errors(y, pred, conf).tolist() == [2, 4, 0, 3]  # 0.9, 0.8, then the tie in row order
    assert worst_errors(y, pred, conf, limit=2).tolist() == [2, 4]
    assert worst_errors(y, y, conf).tolist() == []


def test_thumbnails_are_small_pngs_and_small_images_stay_sharp():
    from PIL import Image

    digit = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    thumb = np.asarray(Image.open(io.BytesIO(thumbnail_png(digit))))
    assert thumb.shape == (64, 64, 3)
    assert np.array_equal(thumb[..., 0], np.kron(digit, np.ones((8, 8), dtype=np.uint8)))  # nearest neighbour
    photo = np.random.default_rng(0).integers(0, 255, (300, 150, 3), dtype=np.uint8)
    assert Image.open(io.BytesIO(thumbnail_png(photo))).size == (32, 64)


def test_the_gallery_shows_the_chosen_heads_most_confidently_wrong_test_images(swept):
    run = swept / "run"
    y, pred, proba, ids = _chosen_predictions(run)
    conf = proba[np.arange(len(pred)), pred]
    wrong = [int(i) for i in np.flatnonzero(pred != y)]
    expected = sorted(wrong, key=lambda i: (-conf[i], i))
    assert len(expected) >= FLIPPED - 2
    page = (run / "report.html").read_text()
    figures = Gallery(page).figures
    assert len(figures) == len(expected) and {f["cls"] for f in figures} == {"thumb"}
    for fig, k in zip(figures, expected):
        assert fig["caption"] == f"true: {NAMES[y[k]]} / predicted: {NAMES[pred[k]]} / probability {conf[k]:.3f}"
        assert fig["alt"] == f"true {NAMES[y[k]]}, predicted {NAMES[pred[k]]}"
        image = np.load(swept / "d.npz")["x_test"][ids[k]]  # 16 px: 4x nearest neighbour to 64 px
        assert np.array_equal(_png_array(fig["src"]), np.repeat(np.repeat(image, 4, axis=0), 4, axis=1))
    assert "&lt;script&gt;document.title='pwned'&lt;/script&gt;" in page and "<script" not in page
    md = (run / "report.md").read_text()
    assert f"All {len(expected)} test errors the chosen head made with the highest probability" in md


def test_the_per_class_table_is_sklearns_classification_report(swept):
    from sklearn.metrics import classification_report

    run = swept / "run"
    y, pred, _, _ = _chosen_predictions(run)
    report = classification_report(y, pred, target_names=NAMES, output_dict=True, zero_division=0)
    md = (run / "report.md").read_text().splitlines()
    start = md.index("| class | test images | precision | recall (per-class accuracy) | ± se | F1 |")
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in md[start + 2:start + 5]]
    for name, row in zip(NAMES, rows):
        r = report[name]
        assert html.unescape(row[0].replace("\\", "")) == name
        acc = float(np.mean(pred[y == NAMES.index(name)] == NAMES.index(name)))
        assert row[1:] == [str(int(r["support"])), f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                           f"{max(np.sqrt(acc * (1 - acc) / r['support']), 1 / (2 * r['support'])):.3f}",
                           f"{r['f1-score']:.3f}"]
    note = md[start + 6]
    assert note.startswith(f"Macro average (scikit-learn's `classification_report`): precision "
                           f"{report['macro avg']['precision']:.3f}")
    assert f"These are noisy: the smallest class has {np.bincount(y).min()} test images" in note


def test_the_most_confused_pairs_come_from_the_confusion_matrix(swept):
    from sklearn.metrics import confusion_matrix

    run = swept / "run"
    y, pred, _, _ = _chosen_predictions(run)
    cm = confusion_matrix(y, pred, labels=range(3))
    cells = sorted(((cm[t, p], t, p) for t in range(3) for p in range(3) if t != p and cm[t, p]),
                   key=lambda c: (-c[0], c[1], c[2]))[:5]
    md = (run / "report.md").read_text().splitlines()
    start = md.index("| true class | predicted as | test images | share of the true class |")
    body = md[start + 2:start + 2 + len(cells)]
    assert [line.split(" | ")[-2:] for line in body] == [[str(n), f"{n / cm[t].sum():.3f} |"] for n, t, _ in cells]
    assert not md[start + 2 + len(cells)].startswith("|")


def test_a_moved_or_changed_data_set_leaves_one_line_instead_of_the_gallery(swept, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(swept / "run", run)
    data = swept / "d.npz"
    kept = data.read_bytes()
    try:
        data.rename(tmp_path / "moved.npz")
        refresh_report(run)
        md = (run / "report.md").read_text()
        (line,) = [x for x in md.splitlines() if x.startswith("No gallery")]
        assert "test images could not be loaded" in line and "does not exist" in line and "d.npz" in line
        assert "| class | test images | precision |" in md and not Gallery((run / "report.html").read_text()).figures
        arrays = dict(np.load(tmp_path / "moved.npz"))
        arrays["x_test"] = 255 - arrays["x_test"]  # same path, other images
        np.savez(data, **arrays)
        refresh_report(run)
        (line,) = [x for x in (run / "report.md").read_text().splitlines() if x.startswith("No gallery")]
        assert "is no longer the data its features were cached from" in line
    finally:
        data.write_bytes(kept)


def _row(layer, depth, val, head="logreg", size="64", shots="", cache="c.h5"):
    return {"backbone": "lite0", "weights": "imagenet", "pool": "gap", "image_size": size, "layer": layer,
            "depth": str(depth), "rel_depth": str(depth / 3), "dim": "8", "head": head, "shots": shots, "repeat": "0",
            "val_accuracy": str(val), "test_accuracy": "0.5", "fit_seconds": "0.1", "n_val": "100",
            "row_key": f"{head}-{layer}-{size}-{shots}", "cache_file": cache}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().split("|")[1:-1]]


def test_all_results_says_constants_once_sorts_by_curve_and_depth_and_marks_the_chosen_row():
    rows = [_row("bn2", 3, 0.7, size="128", cache="big.h5"), _row("bn1", 0, 0.6, head="knn"),
            _row("bn2", 3, 0.8), _row("blocks.1", 1, 0.9), _row("bn1", 0, 0.5),
            _row("bn2", 3, 0.4, head="finetune:last:2", size="64"), _row("bn1", 0, 0.3, size="128", cache="big.h5")]
    decision = {"chosen_layer": "blocks.1", "curve": {"cache_file": "c.h5"}}
    lines = results_table(rows, decision)
    assert lines[0] == "Same in every row: backbone lite0, weights imagenet, pooling gap, shots all. " \
                       "★ marks the recommended layer and head."
    assert _cells(lines[2]) == ["chosen", "size", "layer", "depth", "dim", "head", "val", "test", "fit s"]
    body = [_cells(line) for line in lines[4:]]
    # probes before fine-tuning; image size as a number (64 before 128); head; layers by depth
    assert [(r[1], r[5], r[2]) for r in body] == [
        ("64", "knn", "bn1"), ("64", "logreg", "bn1"), ("64", "logreg", "blocks.1"), ("64", "logreg", "bn2"),
        ("128", "logreg", "bn1"), ("128", "logreg", "bn2"), ("64", "finetune:last:2", "bn2")]
    assert [r[0] for r in body] == ["", "", "★", "", "", "", ""]
    assert results_table(rows)[0].endswith("★ marks the recommended layer and head.")  # best on val without one
    assert "★" not in "".join(results_table([dict(r, row_key="") for r in rows]))  # nothing can be chosen


def test_the_swept_reports_star_is_the_recommendation(swept):
    run = swept / "run"
    decision = json.loads((run / "results.json").read_text())["decision"]
    head = json.loads((run / "chosen_head" / "head.json").read_text())
    md = (run / "report.md").read_text().splitlines()
    start = md.index("| chosen | layer | depth | dim | val | test | fit s |")
    starred = [_cells(line) for line in md[start + 2:start + 4] if line.startswith("| ★ |")]
    assert [r[1] for r in starred] == [decision["chosen_layer"]] == [head["layer"]]


@pytest.mark.skipif(headless_browser() is None, reason="no headless browser (chromium) on this machine; "
                                               "bench/render_report.sh installs one")
def test_headless_chromium_draws_the_gallerys_thumbnails(swept, tmp_path):
    """The page as Chromium draws it holds the first thumbnail's pixels (the CSP lets data: images through)."""
    from PIL import Image

    page = (swept / "run" / "report.html").read_text()
    first = _png_array(Gallery(page).figures[0]["src"]).astype(int)
    shot = tmp_path / "shot.png"
    subprocess.run([headless_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--force-device-scale-factor=1",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1100,5000",
                    (swept / "run" / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # where the thumbnail's top-left pixel is, does the 64x64 block match (colour management may move a level)?
    ys, xs = np.nonzero(np.abs(img - first[0, 0]).max(axis=2) <= 3)
    found = [(y, x) for y, x in zip(ys, xs) if y + 64 <= img.shape[0] and x + 64 <= img.shape[1]
             and np.abs(img[y:y + 64, x:x + 64] - first).max() <= 3]
    assert found, "the first thumbnail of the gallery is not on the rendered page"
