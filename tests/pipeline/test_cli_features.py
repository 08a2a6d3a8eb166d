"""The features stage through the command line: the cache path printed last, concurrent extractions, cache info/rm
(bad input: test_bad_input_catalogue.py)."""
import subprocess
import sys

from tests.conftest import ROOT, make_npz, run_cli
from transferlab.features.cache import read_status


def run(*args, cwd=ROOT):
    return run_cli(*args, cwd=cwd)


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
            "--batch-size", "8", "--cache-dir", tmp_path / "c"]  # not --quiet: its log says "cache hit"
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


def test_quiet_extract_prints_only_the_path_yet_keeps_its_warnings(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n_train=12, n_test=6)
    args = ("extract", "--data", f"npz:{npz}", "--image-size", "32", "--layers", "bn1", "--cache-dir", tmp_path / "c")
    loud = run(*args)
    assert "plan:" in loud.stderr
    from pathlib import Path

    path = Path(loud.stdout.strip().splitlines()[-1])
    path.write_bytes(b"not an HDF5 file")  # damaged: the next run moves it aside and says so
    quiet = run(*args, "--quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == str(path)
    assert "plan:" not in quiet.stderr
    lines = quiet.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "moved it to" in lines[0]
    assert read_status(path)["splits"]["train"]["complete"]
