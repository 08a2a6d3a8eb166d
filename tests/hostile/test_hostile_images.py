"""Hostile image inputs: a photo tagged sideways, a decompression bomb, an npz with repeated class names.

Each case: the attack, the expected refusal or correction, and that nothing looks finished afterwards.
"""
import csv
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.conftest import make_npz, run_cli, write_pngs
from tests.image_files import asymmetric, bomb_png, no_decode_of, save_tagged, upright  # noqa: F401 (fixture)
from transferlab.features import extract, load_dataset, load_split
from transferlab.features.cache import cache_files, layer_complete, read_status
from transferlab.features.preprocess import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV


def _nothing_complete(cache_dir) -> bool:
    """No cache file in ``cache_dir`` holds a finished layer of any split."""
    for path in cache_files(cache_dir):
        st = read_status(path)
        if st and any(layer_complete(s, layer) for s in st["splits"].values() for layer in s["layers"]):
            return False
    return True


def _folder(root, extra_train_a=()):
    """train/{a,b} and test/{a,b} of small PNGs; ``extra_train_a`` (name, writer) pairs go first into train/a."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            write_pngs(rng.integers(0, 256, (n, 16, 20, 3), dtype=np.uint8), root / split / c, prefix="z")
    for name, write in extra_train_a:
        write(root / "train" / "a" / name)
    return root


# --- a phone photo tagged with an EXIF orientation ------------------------------------------------

def test_extraction_turns_a_photo_tagged_sideways_upright(tmp_path, lite0):
    """Attack: a JPEG whose pixels are stored sideways with EXIF orientation 6 (what phones write).
    Expected: its cached features are those of the upright picture (a pre-turned untagged copy), not of
    the stored pixels; and the cache's spec records ``exif_transpose``."""
    stored = {}
    root = _folder(tmp_path / "imgs", [
        ("p_tagged.jpg", lambda p: stored.setdefault("px", save_tagged(p, asymmetric(), 6))),
        ("q_upright.png", lambda p: Image.fromarray(np.ascontiguousarray(upright(stored["px"], 6))).save(p)),
        ("r_stored.png", lambda p: Image.fromarray(stored["px"]).save(p))])
    names = [p.name for p in load_dataset(f"folder:{root}").splits["train"].paths[:3]]
    assert names == ["p_tagged.jpg", "q_upright.png", "r_stored.png"]
    path = extract(f"folder:{root}", lite0, layers="blocks.2", image_size=32, dtype="float32",
                   cache_dir=tmp_path / "c", progress=False, num_workers=0, decode="cpu")
    x, _, _ = load_split(path, "train", "blocks.2")
    scale = np.abs(x[1]).max()
    assert np.abs(x[0] - x[1]).max() <= 1e-5 * scale  # the tagged photo = its upright copy
    assert np.abs(x[0] - x[2]).max() > 0.05 * scale  # and not the pixels as stored
    with h5py.File(path, "r") as f:
        assert bool(f.attrs["exif_transpose"]) is True


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory, lite0):
    """A logreg head on blocks.2 of a small npz, and a copy trained on a cache written before
    ``exif_transpose`` existed (its root attribute removed)."""
    tmp = tmp_path_factory.mktemp("heads")
    npz = make_npz(tmp / "d.npz", n_train=60, n_test=24, size=16)
    path = extract(f"npz:{npz}", lite0, layers="blocks.2", image_size=32, cache_dir=tmp / "c", progress=False)
    res = run_cli("train", "--features", path, "--layer", "blocks.2", "--head", "logreg", "--out", tmp / "head")
    assert res.returncode == 0, res.stderr
    with h5py.File(path, "a") as f:
        if "exif_transpose" in f.attrs:
            del f.attrs["exif_transpose"]
    res = run_cli("train", "--features", path, "--layer", "blocks.2", "--head", "logreg", "--out", tmp / "old_head")
    assert res.returncode == 0, res.stderr
    return tmp


def _scores(rows):
    return [dict(r["top_k"]) for r in rows]


def test_predict_turns_a_tagged_photo_upright_and_an_old_head_decodes_as_it_was_trained(tmp_path, head_dir):
    """Attack: the same sideways-tagged photo given to ``predict``. Expected: scored as its upright copy.
    A head trained on a cache written before EXIF orientation was applied (no ``exif_transpose`` in its
    spec) reads it as false and scores the pixels as stored, as its training features were made."""
    from transferlab.pipeline.predict import predict_rows

    stored = save_tagged(tmp_path / "tagged.jpg", asymmetric(), 6)
    Image.fromarray(np.ascontiguousarray(upright(stored, 6))).save(tmp_path / "upright.png")
    Image.fromarray(stored).save(tmp_path / "stored.png")
    files = [tmp_path / "tagged.jpg", tmp_path / "upright.png", tmp_path / "stored.png"]
    new = _scores(predict_rows(head_dir / "head", files, progress=False))
    old = _scores(predict_rows(head_dir / "old_head", files, progress=False))
    for got, want, other in ((new, new[1], new[2]), (old, old[2], old[1])):
        assert got[0].keys() == want.keys() and all(got[0][c] == pytest.approx(want[c], abs=1e-6) for c in want)
        assert max(abs(got[0].get(c, 0) - other.get(c, 0)) for c in want) > 1e-4
    assert json.loads((head_dir / "head" / "head.json").read_text())["extraction"]["exif_transpose"] is True
    assert json.loads((head_dir / "old_head" / "head.json").read_text())["extraction"]["exif_transpose"] is False


def test_fine_tuning_batches_turn_a_tagged_photo_upright(tmp_path):
    """Attack: the sideways-tagged photo in fine-tuning data. Expected: the training batch holds the
    upright picture, equal to its pre-turned untagged copy."""
    from transferlab.finetuning.train import SplitData

    stored = save_tagged(tmp_path / "tagged.jpg", asymmetric(), 8)
    Image.fromarray(np.ascontiguousarray(upright(stored, 8))).save(tmp_path / "upright.png")
    Image.fromarray(stored).save(tmp_path / "stored.png")
    data = SplitData(np.zeros(3, np.int64), paths=[tmp_path / n for n in ("tagged.jpg", "upright.png", "stored.png")])
    (x, y), = list(data.batches(np.arange(3), 3, 24, "bicubic"))
    assert x.shape == (3, 3, 24, 24)
    assert np.array_equal(x[0].numpy(), x[1].numpy()) and not np.allclose(x[0].numpy(), x[2].numpy(), atol=5)


# --- a decompression bomb: 144 million pixels in a few kB -----------------------------------------

def test_a_decompression_bomb_stops_extract_naming_the_file_before_decoding_it(tmp_path, no_decode_of):
    """Attack: a 12000x12000 PNG of a few kB among the training images. Expected: ``extract`` stops with
    one line naming the file, its size and the limit (exit 2), read from the header without decoding
    the pixels; no cache file holds a finished layer."""
    root = _folder(tmp_path / "imgs", [("a0_bomb.png", bomb_png)])
    bomb = root / "train" / "a" / "a0_bomb.png"
    assert bomb.stat().st_size < 100_000
    attempts = no_decode_of(bomb)
    res = run_cli("extract", "--data", f"folder:{root}", "--layers", "blocks.2", "--image-size", 32,
                  "--cache-dir", tmp_path / "c", "--device", "cpu", "--workers", 0, "--decode", "cpu", "--quiet")
    assert res.returncode == 2, res.stderr
    assert res.stderr == (f"error: image {bomb} is 12000x12000 = 144000000 pixels, over the limit of "
                          f"{DEFAULT_MAX_PIXELS}; shrink it, or raise the limit with {MAX_PIXELS_ENV}\n")
    assert attempts == [] and _nothing_complete(tmp_path / "c")


def test_a_decompression_bomb_is_a_skipped_row_in_predict(tmp_path, head_dir, no_decode_of):
    """Attack: the bomb given to ``predict`` with a good image. Expected: as every unreadable file there,
    an error row naming the limit, the other image classified, exit 1; the bomb never decoded."""
    bomb = bomb_png(tmp_path / "bomb.png")
    good = write_pngs(np.full((1, 16, 16, 3), 90, np.uint8), tmp_path)[0]
    attempts = no_decode_of(bomb)
    res = run_cli("predict", "--model", head_dir / "head", bomb, good, "--out", tmp_path / "pred.csv")
    assert res.returncode == 1, res.stderr
    assert str(bomb) in res.stderr and "Traceback" not in res.stderr
    with open(tmp_path / "pred.csv", newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    assert f"12000x12000 = 144000000 pixels, over the limit of {DEFAULT_MAX_PIXELS}" in rows[str(bomb)]["error"]
    assert rows[str(good)]["error"] == "" and rows[str(good)]["class"]
    assert attempts == []


@pytest.mark.parametrize("workers", [0, 1])
def test_a_decompression_bomb_stops_fine_tuning_batches_with_one_line(tmp_path, no_decode_of, workers):
    """Attack: the bomb in fine-tuning data, decoded in the main process or in a DataLoader worker.
    Expected: refused by name before it is decoded, in one line (not the worker's traceback)."""
    from transferlab.features import UserInputError
    from transferlab.finetuning.train import SplitData

    bomb = bomb_png(tmp_path / "bomb.png")
    attempts = no_decode_of(bomb)
    data = SplitData(np.zeros(2, np.int64), paths=[write_pngs(np.zeros((1, 8, 8, 3), np.uint8), tmp_path)[0], bomb])
    with pytest.raises(UserInputError) as err:
        list(data.batches(np.arange(2), 1, 24, "bicubic", num_workers=workers))
    assert str(err.value) == (f"image {bomb} is 12000x12000 = 144000000 pixels, over the limit of "
                              f"{DEFAULT_MAX_PIXELS}; shrink it, or raise the limit with {MAX_PIXELS_ENV}")
    assert attempts == []


# --- an npz whose class names repeat ---------------------------------------------------------------

def test_repeated_npz_class_names_are_refused_by_name(tmp_path):
    """Attack: ``class_names = ["a", "a", "b"]``: two classes that reports and predictions cannot tell
    apart. Expected: one line naming the repeated name, exit 2, no cache file written."""
    npz = make_npz(tmp_path / "d.npz", n_train=6, n_test=3)
    arrays = dict(np.load(npz))
    arrays["class_names"] = np.array(["a", "a", "b"])
    np.savez(npz, **arrays)
    res = run_cli("extract", "--data", f"npz:{npz}", "--layers", "blocks.2", "--image-size", 32,
                  "--cache-dir", tmp_path / "c", "--device", "cpu", "--quiet")
    assert res.returncode == 2
    assert res.stderr == (f"error: {npz}: class_names repeats 'a'; every class needs a name of its own: "
                          f"rename or merge those classes\n")
    assert cache_files(tmp_path / "c") == []
