"""Bad-input catalogue: every input a user can get wrong, through the CLI: exit 2, one line ``error: ...``
naming the input and the fix, no traceback, and nothing left behind that looks like finished work."""
import json

import numpy as np
import pytest
from PIL import Image

from tests.cache_fixtures import digits_splits, write_cache
from tests.conftest import ROOT, make_npz, run_cli
from tests.mounts import tmpfs
from transferlab.features.cache import read_status


@pytest.fixture(scope="module")
def t(tmp_path_factory):
    t = tmp_path_factory.mktemp("bad")
    np.savez(t / "nokeys.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, int))
    np.savez(t / "mismatch.npz", x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.zeros(2, int),
             x_test=np.zeros((1, 4, 4), np.uint8), y_test=np.zeros(1, int))
    np.savez(t / "objects.npz", x_train=np.array([np.zeros((4, 4), np.uint8)] * 2 + [None], dtype=object),
             y_train=np.zeros(3, int), x_test=np.zeros((1, 4, 4), np.uint8), y_test=np.zeros(1, int))
    np.savez(t / "empty_test.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 1, 0, 1]),
             x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, int))
    np.savez(t / "sparse_labels.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0, 100000, 0, 100000]),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.array([0, 100000]))
    np.savez(t / "one_class.npz", x_train=np.zeros((6, 8, 8), np.uint8), y_train=np.zeros(6, int),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, int), class_names=np.array(["only"]))
    make_npz(t / "ok.npz", n_train=12, n_test=6, size=8)
    for split in ("train", "test"):
        for c in ("a", "b"):  # two classes: a single class folder is refused before any image is read
            d = t / "imgs" / split / c
            d.mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "ok.png")
    (t / "imgs" / "test" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    labels, features = digits_splits(with_val=False, n_train=200, n_test=100)
    cache = write_cache(t / "feats.h5", labels, features)
    assert run_cli("train", "--features", cache, "--layer", "blocks.3", "--head", "logreg", "--out",
                   t / "head").returncode == 0
    edited = t / "head_edited"
    edited.mkdir()
    (edited / "head.safetensors").write_bytes((t / "head" / "head.safetensors").read_bytes())
    meta = json.loads((t / "head" / "head.json").read_text())
    meta["layer"] = "stem"  # another layer: the prediction would silently change
    (edited / "head.json").write_text(json.dumps(meta))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(t / "photo.png")
    return t


EXTRACT = ["extract", "--image-size", "16", "--cache-dir", "{t}/cache", "--quiet"]
FINETUNE = ["finetune", "--image-size", "32", "--epochs", "1", "--out", "{t}/ft", "--quiet"]
CASES = {
    # extract: data
    "npz missing": (EXTRACT + ["--data", "npz:{t}/missing.npz"], "does not exist"),
    "npz keys missing": (EXTRACT + ["--data", "npz:{t}/nokeys.npz"], "lacks the keys x_test, y_test"),
    "npz counts differ": (EXTRACT + ["--data", "npz:{t}/mismatch.npz"],
                          "x_train has 3 images but y_train has 2 labels"),
    "npz object array": (EXTRACT + ["--data", "npz:{t}/objects.npz"], "x_train is stored as Python objects"),
    "npz empty x_test": (EXTRACT + ["--data", "npz:{t}/empty_test.npz"], "x_test holds no images"),
    "labels 100000 without class_names": (EXTRACT + ["--data", "npz:{t}/sparse_labels.npz"],
                                          "not the contiguous class indices"),
    "unreadable image": (EXTRACT + ["--data", "folder:{t}/imgs"], "broken.jpg"),
    # extract: options
    "unknown backbone": (EXTRACT + ["--data", "digits", "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    "unknown layer": (EXTRACT + ["--data", "digits", "--layers", "blocks.42"], "valid layers: bn1, blocks.0"),
    "image size 100000": (["extract", "--data", "digits", "--image-size", "100000"],
                          "image size 100000 is out of range"),
    "batch cannot fit in memory": (["extract", "--data", "digits", "--image-size", "512", "--batch-size", "100000",
                                    "--cache-dir", "{t}/cache"], "lower --batch-size"),
    "unknown dtype": (EXTRACT + ["--data", "digits", "--dtype", "int8"], "unknown dtype 'int8'"),
    "unknown pooling": (EXTRACT + ["--data", "digits", "--pool", "median"], "unknown pooling 'median'"),
    "negative workers": (EXTRACT + ["--data", "folder:{t}/imgs", "--workers", "-1"], "--workers -1 must be 0 or more"),
    # train / predict / sweep / finetune
    "train: no such features file": (["train", "--features", "{t}/nope.h5", "--layer", "bn1"], "does not exist"),
    "train: unknown layer": (["train", "--features", "{t}/feats.h5", "--layer", "blocks.9"], "valid layers"),
    "predict: edited head.json": (["predict", "--model", "{t}/head_edited", "{t}/photo.png"],
                                  "was changed after it was saved"),
    "predict: no such image": (["predict", "--model", "{t}/head", "{t}/nope.png"], "image {t}/nope.png does not exist"),
    "sweep: unknown head": (["sweep", "--data", "npz:{t}/ok.npz", "--heads", "tree", "--out", "{t}/sw", "--quiet"],
                            "tree"),
    "finetune: a single class": (FINETUNE + ["--data", "npz:{t}/one_class.npz"], "single class"),
    "finetune: labels 100000": (FINETUNE + ["--data", "npz:{t}/sparse_labels.npz"], "not the contiguous class indices"),
}


def _nothing_finished(t):
    for f in (t / "cache").glob("*.h5") if (t / "cache").exists() else []:
        st = read_status(f)
        assert st is None or not any(s["complete"] for s in st["splits"].values()), f
    assert not (t / "sw" / "results.json").exists()
    assert not (t / "ft" / "model.json").exists()
    m = t / "ft" / "metrics.json"
    assert not m.exists() or not json.loads(m.read_text()).get("complete")


def assert_one_line_error(out, needle):
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l.lower()]
    # one error line, the last; anything before it is the extraction plan (informational)
    assert errors == [lines[-1]] and lines[-1].startswith("error: ") and needle in lines[-1], out.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing_finished(t, case):
    args, needle = CASES[case]
    out = run_cli(*[a.replace("{t}", str(t)) for a in args], cwd=ROOT)
    assert_one_line_error(out, needle.replace("{t}", str(t)))
    _nothing_finished(t)


def test_a_read_only_cache_folder_on_a_cache_miss_is_one_line(t, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        out = run_cli("extract", "--data", f"npz:{t}/ok.npz", "--image-size", "16", "--cache-dir", ro, "--quiet")
        assert_one_line_error(out, f"cannot write to the cache directory {ro}")
        assert "--cache-dir" in out.stderr
