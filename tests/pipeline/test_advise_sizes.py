"""advise reads its answer at an input size it measured: photos larger than 64 px are measured at their own
(automatic) size and at 64 px on the same rows, the two best layers compared by a paired statistic, and
the smaller size is taken only when it is better beyond the noise (issue 18: input size flipped the
answer, silently)."""
import json
import math

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.pipeline.test_image_size import photo_folder
from transferlab.features.cache import read_cache_meta
from transferlab.features.spec import ImageSize
from transferlab.pipeline.advise import other_size
from transferlab.pipeline.decision import Z, choose_size
from transferlab.pipeline.evidence import CurveMeasurement, measure_curve, peak_gap_between


def _size(px, peak_val, last_val=0.5, why="auto: ..."):
    return {"size": px, "why": why, "peak": "blocks.4", "peak_val": peak_val, "last": "bn2", "last_val": last_val,
            "method": "split"}


def test_the_other_size_is_taken_only_beyond_the_noise():
    own, small = _size(96, 0.80), _size(64, 0.86, why="compared")
    beyond = {"difference": 0.06, "se": 0.06 / (Z + 0.5), "in_se": Z + 0.5, "method": "split", "n": 200}
    within = {**beyond, "se": 0.06 / (Z - 0.5), "in_se": Z - 0.5}
    behind = {**beyond, "difference": -0.06, "in_se": -(Z + 0.5)}
    assert choose_size([own, small], beyond)[0] == 64
    size, why = choose_size([own, small], within)
    assert size == 96 and "the data's own size 96 px" in why and "+6.0 points" in why
    assert choose_size([own, small], behind)[0] == 96
    assert choose_size([own], None) == (96, "input size 96 px (auto: ...); one size measured")


def test_which_second_size_is_measured():
    auto96, auto72 = ImageSize(96, "auto", auto=True), ImageSize(72, "auto", auto=True)
    assert other_size(auto96, "auto") == 64
    assert other_size(auto72, "auto") is None  # within 1.25x of 64: nothing material to compare
    assert other_size(ImageSize(96, "--image-size 96"), "auto") is None  # the user's own answer
    assert other_size(ImageSize(64, "auto", auto=True), "128") == 128
    assert other_size(auto96, 96) is None
    for off in (None, "off", 0, "0"):
        assert other_size(auto96, off) is None


def test_two_measurements_pair_only_on_the_same_folds():
    y = np.arange(20) % 2
    from transferlab.classifiers.compare import repeated_folds

    a = CurveMeasurement([], "kfold 1x5", None, "x", "x", paired={"x": np.ones(5)}, splits=repeated_folds(y, 5, 1, 0))
    b = CurveMeasurement([], "kfold 1x5", None, "y", "y", paired={"y": np.ones(5)}, splits=repeated_folds(y, 5, 1, 1))
    with pytest.raises(ValueError, match="same folds"):
        peak_gap_between(a, b)
    with pytest.raises(ValueError, match="cannot pair"):
        peak_gap_between(a, CurveMeasurement([], "split", None, "y", "y"))


@pytest.fixture(scope="module")
def advised(tmp_path_factory):
    """A folder of 96x96 photos advised as typed: automatic size 96 px, compared with 64 px."""
    tmp = tmp_path_factory.mktemp("sizes")
    root = photo_folder(tmp / "photos", [(96, 96)], per_class=10)
    out = run_cli("advise", "--data", f"folder:{root}", "--no-random", "--no-scores", "--cache-dir", tmp / "cache",
                  "--json")
    assert out.returncode == 0, out.stderr
    return root, tmp, json.loads(out.stdout)


def test_advise_measures_both_sizes_on_the_same_rows_and_pairs_them(advised):
    root, tmp, adv = advised
    sizes = adv["evidence"]["image_sizes"]
    assert [s["size"] for s in sizes] == [96, 64] and sizes[0]["why"].startswith("auto: median shorter side 96 px")
    files = {read_cache_meta(p)["image_size"]: p for p in map(str, (tmp / "cache").rglob("*.h5"))}
    assert {96, 64} <= set(files)
    # an independent measurement of each cache file, then the paired gap by hand (Nadeau-Bengio)
    m = {px: measure_curve(files[px], list(read_cache_meta(files[px])["catalog"]), seed=0) for px in (96, 64)}
    for s in sizes:
        got = {p.layer: p.val_accuracy for p in m[s["size"]].points}
        assert s["peak_val"] == pytest.approx(max(got.values())) and s["last_val"] == pytest.approx(got["bn2"])
    assert m[96].method.startswith("kfold") and m[96].splits is not None
    d = m[64].paired[m[64].peak] - m[96].paired[m[96].peak]
    n_te = np.mean([te.size for _, te in m[96].splits])
    n_tr = np.mean([tr.size for tr, _ in m[96].splits])
    se = math.sqrt(max((1 / d.size + n_te / n_tr) * d.var(ddof=1), 1 / n_te ** 2 / d.size))
    gap = adv["evidence"]["size_gap"]
    assert gap["difference"] == pytest.approx(d.mean()) and gap["se"] == pytest.approx(se)
    chosen = 64 if gap["in_se"] > Z else 96
    assert adv["facts"]["image_size"] == chosen and f"--image-size {chosen}" in adv["next_command"]
    assert adv["reasons"][0].startswith("measured at two input sizes (96 px: ")


def test_the_text_output_names_both_sizes(advised):
    root, tmp, _ = advised
    out = run_cli("advise", "--data", f"folder:{root}", "--no-random", "--no-scores", "--cache-dir", tmp / "cache")
    assert out.returncode == 0, out.stderr
    assert "at 96 px and 64 px" in out.stderr
    assert any(line.strip().startswith("- measured at two input sizes") for line in out.stdout.splitlines())


def test_an_explicit_size_or_off_measures_one(advised):
    root, tmp, _ = advised
    for extra in (["--image-size", "96"], ["--compare-size", "off"]):
        out = run_cli("advise", "--data", f"folder:{root}", "--no-random", "--no-scores", "--cache-dir", tmp / "cache",
                      "--json", *extra)
        assert out.returncode == 0, out.stderr
        adv = json.loads(out.stdout)
        assert adv["evidence"]["image_sizes"] is None and "image_size" not in adv["facts"]
