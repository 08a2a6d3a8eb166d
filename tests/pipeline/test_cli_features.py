"""The features stage through the command line: one-line errors, exit 2, nothing left that looks finished."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from transferlab.features.cache import read_status
from tests.conftest import ROOT, make_npz, run_cli


def run(*args, cwd=ROOT):
    return run_cli(*args, cwd=cwd)


def _assert_one_line_error(out, needle):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def bad_inputs(tmp_path):
    np.savez(tmp_path / "nokeys.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, int))
    np.savez(tmp_path / "mismatch.npz", x_train=np.zeros((3, 4, 4), np.uint8), y_train=np.zeros(2, int),
             x_test=np.zeros((1, 4, 4), np.uint8), y_test=np.zeros(1, int))
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "ok.png")
    (tmp_path / "imgs" / "test" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return tmp_path


@pytest.mark.parametrize("args,needle", [
    (["--data", "npz:{t}/missing.npz"], "does not exist"),
    (["--data", "npz:{t}/nokeys.npz"], "lacks the keys x_test, y_test"),
    (["--data", "npz:{t}/mismatch.npz"], "x_train has 3 images but y_train has 2 labels"),
    (["--data", "folder:{t}/imgs"], "broken.jpg"),
    (["--data", "digits", "--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    (["--data", "digits", "--layers", "blocks.42"], "valid layers: bn1, blocks.0"),
    (["--data", "digits", "--image-size", "100000"], "image size 100000 is out of range"),
    (["--data", "digits", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["--data", "digits", "--pool", "median"], "unknown pooling 'median'"),
])
def test_bad_extract_input_is_one_line_exit_2_and_leaves_no_finished_file(bad_inputs, args, needle):
    cache = bad_inputs / "cache"
    args = [a.replace("{t}", str(bad_inputs)) for a in args]
    size = [] if "--image-size" in args else ["--image-size", "16"]
    out = run("extract", *args, *size, "--cache-dir", cache, "--quiet")
    _assert_one_line_error(out, needle)
    for f in cache.glob("*.h5") if cache.exists() else []:
        st = read_status(f)
        assert st is None or not any(s["complete"] for s in st["splits"].values())


def test_extract_prints_the_cache_path_last_and_layers_lists_the_catalog(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=12, n_test=6)
    out = run("extract", "--data", f"npz:{npz}", "--image-size", "32", "--layers", "bn1,blocks.6",
              "--cache-dir", tmp_path / "c", "--quiet")
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip().splitlines()[-1]
    assert path.endswith(".h5") and read_status(path)["splits"]["test"]["complete"]
    ls = run("cache", "ls", "--cache-dir", tmp_path / "c")
    assert "complete" in ls.stdout and path in ls.stdout
    layers = run("layers", "--backbone", "lite0", "--image-size", "64")
    rows = [l.split() for l in layers.stdout.splitlines()[2:]]
    assert [r[1] for r in rows] == ["bn1"] + [f"blocks.{i}" for i in range(7)] + ["bn2"]
    assert rows[-1][2:4] == ["1280", "32"]


def test_two_processes_on_the_same_key_both_finish_with_one_sound_file(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=96, n_test=16)
    args = ["extract", "--data", f"npz:{npz}", "--image-size", "32", "--layers", "bn1,blocks.2",
            "--batch-size", "8", "--cache-dir", tmp_path / "c", "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "transferlab", *map(str, args)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0].strip() == outs[1][0].strip()
    assert any("cache hit" in err for _, err in outs)  # the second one reused the first one's work
    assert run("cache", "verify", "--cache-dir", tmp_path / "c").returncode == 0


def test_cache_info_and_rm(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=12, n_test=6)
    out = run("extract", "--data", f"npz:{npz}", "--image-size", "32", "--layers", "bn1", "--cache-dir",
              tmp_path / "c", "--quiet")
    path = out.stdout.strip().splitlines()[-1]
    info = run("cache", "info", path)
    assert info.returncode == 0 and '"n_total": 12' in info.stdout and '"bn1"' in info.stdout
    rm = run("cache", "rm", path)
    assert rm.returncode == 0 and not (tmp_path / "c" / path).exists()
    assert run("cache", "rm", path).returncode == 2
